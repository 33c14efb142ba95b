"""Keys and the cryptography everything else relies on.

Two cipher suites, chosen when an office is set up (`office init --suite`):

- ``std``: AES-256-GCM, HMAC-SHA-256, HKDF-SHA-256
- ``gm`` (商用密码): SM4-GCM, HMAC-SM3, HKDF-SM3

Key agreement is X25519 and signatures are Ed25519 in both: SM2 is not in
the ``cryptography`` package. Secret keys live in a keyring file sealed under
a passphrase (scrypt) or a key file; nothing here writes a secret in clear.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac as std_hmac
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import SyncdbError
from .files import write_atomic
from .i18n import _

KEYRING_FORMAT = 1
PUBLIC_KEY_FORMAT = 1
NONCE_SIZE = 12
TAG_SIZE = 16
# scrypt cost: 2**15 × 8 × 128 B = 32 MiB and about 0.1 s, once per command.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


class Suite:
    """An AEAD, a hash for HMAC and HKDF, and the key size they take."""

    name = "std"
    key_size = 32

    def hash(self):
        return hashes.SHA256()

    def seal(self, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return AESGCM(key).encrypt(nonce, data, aad)

    def open(self, key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        return AESGCM(key).decrypt(nonce, sealed, aad)

    def mac(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, self.hash())
        h.update(data)
        return h.finalize()

    # For the merge's hot path: the key schedule done once, then one call per value.
    def sealer(self, key: bytes):
        """``seal`` with the key bound: a callable (nonce, data, aad) -> sealed."""
        return AESGCM(key).encrypt

    def opener(self, key: bytes):
        return AESGCM(key).decrypt

    def keyed_mac(self, key: bytes):
        """``mac`` with the key bound: the HMAC's inner and outer pads are hashed once."""
        base = std_hmac.new(key, digestmod=hashlib.sha256)

        def mac(data: bytes) -> bytes:
            h = base.copy()
            h.update(data)
            return h.digest()
        return mac

    def derive(self, secret: bytes, salt: bytes, info: bytes, length: int | None = None) -> bytes:
        return HKDF(self.hash(), length or self.key_size, salt, info).derive(secret)


class _Nonces:
    """12-byte AEAD nonces cut from one os.urandom call per NONCES of them: a call per sealed
    value was a tenth of sealing's cost. Safe across threads (a list iterator hands each slice out
    once) and across fork (a child starts on fresh bytes, never on its parent's)."""

    NONCES = 256

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._next = iter(()).__next__

    def take(self) -> bytes:
        while True:
            try:
                return self._next()
            except StopIteration:
                pool = os.urandom(NONCE_SIZE * self.NONCES)
                self._next = iter([pool[i:i + NONCE_SIZE] for i in range(0, len(pool), NONCE_SIZE)]).__next__


_NONCES = _Nonces()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_NONCES.reset)
fresh_nonce = _NONCES.take


class GMSuite(Suite):
    name = "gm"
    key_size = 16

    def hash(self):
        return hashes.SM3()

    def seal(self, key, nonce, data, aad):
        enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        return enc.update(data) + enc.finalize() + enc.tag

    def open(self, key, nonce, sealed, aad):
        if len(sealed) < TAG_SIZE:
            raise InvalidTag()
        dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, sealed[-TAG_SIZE:])).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(sealed[:-TAG_SIZE]) + dec.finalize()

    def sealer(self, key):
        return lambda nonce, data, aad: self.seal(key, nonce, data, aad)

    def opener(self, key):
        return lambda nonce, sealed, aad: self.open(key, nonce, sealed, aad)

    def keyed_mac(self, key):
        base = hmac.HMAC(key, self.hash())

        def mac(data: bytes) -> bytes:
            h = base.copy()
            h.update(data)
            return h.finalize()
        return mac


SUITES = {"std": Suite(), "gm": GMSuite()}


def suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise SyncdbError(_("unknown cipher suite '{name}'; use one of {suites}").format(
            name=name, suites=', '.join(SUITES))) from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _raw_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def key_id(public_x25519: bytes, public_ed25519: bytes) -> str:
    """A short fingerprint of a party's public keys, for people to compare."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_x25519 + public_ed25519)
    return digest.finalize()[:8].hex()


@dataclass
class PublicKey:
    """What one party publishes: who it is and its two public keys."""

    role: str  # "office" or "community"
    code: str
    suite: str
    x25519: bytes
    ed25519: bytes

    @property
    def id(self) -> str:
        return key_id(self.x25519, self.ed25519)

    def to_json(self) -> str:
        return json.dumps({
            "syncdb_public_key": PUBLIC_KEY_FORMAT, "role": self.role, "code": self.code,
            "suite": self.suite, "x25519": b64(self.x25519), "ed25519": b64(self.ed25519),
            "id": self.id,
        }, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str | None = None) -> "PublicKey":
        try:
            doc = json.loads(text)
            if doc.get("syncdb_public_key") != PUBLIC_KEY_FORMAT:
                raise ValueError(_("not a syncdb public key file"))
            key = cls(doc["role"], doc["code"], doc["suite"], unb64(doc["x25519"]), unb64(doc["ed25519"]))
            if len(key.x25519) != 32 or len(key.ed25519) != 32:
                raise ValueError(_("keys must be 32 bytes"))
            return key
        except (ValueError, KeyError, TypeError) as e:
            raise SyncdbError(_("{where} is not a valid syncdb public key file ({problem}); "
                                "copy the .pub.json file that `office init` or `community init` wrote").format(
                where=_("public key") if where is None else where, problem=e)) from None

    @classmethod
    def read(cls, path) -> "PublicKey":
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"), where=str(path))
        except OSError as e:
            raise SyncdbError(_("cannot read public key file {path}: {problem}").format(
                path=path, problem=e.strerror)) from None

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519).verify(signature, message)
            return True
        except InvalidSignature:
            return False


@dataclass
class Keyring:
    """A party's secret keys, held in memory once unsealed."""

    public: PublicKey
    x25519: bytes
    ed25519: bytes
    # Office only: data keys for values in the store, by id, and the blind-index key.
    data_keys: dict[str, bytes] = field(default_factory=dict)
    data_key_id: str = ""
    index_key: bytes = b""

    @property
    def suite(self) -> Suite:
        return suite(self.public.suite)

    @classmethod
    def generate(cls, role: str, code: str, suite_name: str = "std") -> "Keyring":
        s = suite(suite_name)
        x = X25519PrivateKey.generate()
        ed = Ed25519PrivateKey.generate()
        public = PublicKey(role, code, s.name, _raw_public(x.public_key()), _raw_public(ed.public_key()))
        ring = cls(public, _raw_private(x), _raw_private(ed))
        if role == "office":
            ring.data_keys = {"1": os.urandom(s.key_size)}
            ring.data_key_id = "1"
            ring.index_key = os.urandom(32)
        return ring

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.ed25519).sign(message)

    def agree(self, peer_x25519: bytes) -> bytes:
        return X25519PrivateKey.from_private_bytes(self.x25519).exchange(
            X25519PublicKey.from_public_bytes(peer_x25519))

    def _secrets(self) -> bytes:
        return json.dumps({
            "x25519": b64(self.x25519), "ed25519": b64(self.ed25519),
            "data_keys": {k: b64(v) for k, v in self.data_keys.items()},
            "data_key_id": self.data_key_id, "index_key": b64(self.index_key),
        }).encode()

    def save(self, path, secret: "Secret") -> None:
        """Seal the secret keys under the passphrase or key file and write atomically."""
        s = self.suite
        protection, kek = secret.new_kek(s)
        public = json.loads(self.public.to_json())
        aad = json.dumps(public, sort_keys=True).encode()
        nonce = os.urandom(NONCE_SIZE)
        doc = {
            "syncdb_keyring": KEYRING_FORMAT, "public": public, "protection": protection,
            "nonce": b64(nonce), "sealed": b64(s.seal(kek, nonce, self._secrets(), aad)),
        }
        write_atomic(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode(), mode=0o600)

    @classmethod
    def load(cls, path, secret: "Secret") -> "Keyring":
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            public = PublicKey.from_json(json.dumps(doc["public"]), where=str(path))
            aad = json.dumps(doc["public"], sort_keys=True).encode()
            nonce, sealed, protection = unb64(doc["nonce"]), unb64(doc["sealed"]), doc["protection"]
        except FileNotFoundError:
            raise SyncdbError(_("no keyring at {path}; run `syncdb office init` or `syncdb community init` "
                                "first").format(path=path)) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SyncdbError(_("keyring {path} is damaged ({problem}); restore it from your backup").format(
                path=path, problem=e)) from None
        s = suite(public.suite)
        kek = secret.kek(s, protection, path)
        try:
            secrets = json.loads(s.open(kek, nonce, sealed, aad))
        except InvalidTag:
            raise SyncdbError(
                _("wrong passphrase or key file for keyring {path}; set SYNCDB_PASSPHRASE "
                  "or SYNCDB_KEY_FILE to the one chosen at init").format(path=path)) from None
        return cls(
            public, unb64(secrets["x25519"]), unb64(secrets["ed25519"]),
            {k: unb64(v) for k, v in secrets["data_keys"].items()},
            secrets["data_key_id"], unb64(secrets["index_key"]),
        )


@dataclass
class Secret:
    """What unlocks a keyring: a passphrase (scrypt) or the bytes of a key file."""

    passphrase: str | None = None
    key_file_bytes: bytes | None = None

    @classmethod
    def from_environment(cls, confirm: bool = False) -> "Secret":
        """SYNCDB_KEY_FILE, then SYNCDB_PASSPHRASE, then a prompt if a person is there."""
        key_file = os.environ.get("SYNCDB_KEY_FILE")
        if key_file:
            try:
                data = Path(key_file).read_bytes()
            except OSError as e:
                raise SyncdbError(_("cannot read SYNCDB_KEY_FILE {path}: {problem}").format(
                    path=key_file, problem=e.strerror)) from None
            if len(data) < 32:
                raise SyncdbError(_("key file {path} is too short; it needs at least 32 random bytes "
                                    "(make one with: head -c 32 /dev/urandom > keyfile)").format(path=key_file))
            return cls(key_file_bytes=data)
        passphrase = os.environ.get("SYNCDB_PASSPHRASE")
        if passphrase:
            return cls(passphrase=passphrase)
        if not sys.stdin.isatty():
            raise SyncdbError(_("no passphrase: set SYNCDB_PASSPHRASE or SYNCDB_KEY_FILE "
                                "(unattended runs cannot be asked for one)"))
        passphrase = getpass.getpass(_("Passphrase: "))
        if confirm and getpass.getpass(_("Repeat passphrase: ")) != passphrase:
            raise SyncdbError(_("the two passphrases differ; nothing was written"))
        if not passphrase:
            raise SyncdbError(_("an empty passphrase protects nothing; choose one"))
        return cls(passphrase=passphrase)

    def new_kek(self, s: Suite) -> tuple[dict, bytes]:
        if self.key_file_bytes is not None:
            salt = os.urandom(16)
            return {"kind": "keyfile", "salt": b64(salt)}, s.derive(self.key_file_bytes, salt, b"syncdb keyring")
        salt = os.urandom(16)
        protection = {"kind": "scrypt", "salt": b64(salt), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
        return protection, self._scrypt(s, protection)

    def kek(self, s: Suite, protection: dict, path) -> bytes:
        kind = protection.get("kind")
        if kind == "keyfile":
            if self.key_file_bytes is None:
                raise SyncdbError(_("keyring {path} is sealed with a key file; set SYNCDB_KEY_FILE to it").format(
                    path=path))
            return s.derive(self.key_file_bytes, unb64(protection["salt"]), b"syncdb keyring")
        if kind == "scrypt":
            if self.passphrase is None:
                raise SyncdbError(_("keyring {path} is sealed with a passphrase; set SYNCDB_PASSPHRASE").format(
                    path=path))
            return self._scrypt(s, protection)
        raise SyncdbError(_("keyring {path} uses an unknown protection '{kind}'").format(path=path, kind=kind))

    def _scrypt(self, s: Suite, p: dict) -> bytes:
        kdf = Scrypt(salt=unb64(p["salt"]), length=s.key_size, n=p["n"], r=p["r"], p=p["p"])
        return kdf.derive(self.passphrase.encode("utf-8"))
