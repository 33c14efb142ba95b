"""A community's outbox: the bundles it made, kept until the office acknowledges them.

The bundle ledger in state.db says which are still unacknowledged; a bundle
leaves the outbox only when the office says it holds it: its answer to a push
over HTTP, or its signed acknowledgement (``OFFICE-ack.bundle``, see
``outbound.write_acknowledgements``, and the header ``acknowledged`` of every
resolutions bundle), which a community that only carries folders on a USB
stick clears its outbox with.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

from . import bundle
from .crypto import PublicKey
from .errors import SyncdbError
from .i18n import _
from .state import RESEND, open_state, outbox_dir, read_config, state_dir

LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|payload)-(?P<pid>[0-9]+)")
LEFTOVER_AGE = 3600  # seconds; where a process cannot be asked after (Windows), an older file is left over


def pending(workdir) -> list[Path]:
    """Bundles in the outbox not yet acknowledged by the office, in sequence order."""
    with open_state(workdir) as state:
        rows = state.unacknowledged()
    return [outbox_dir(workdir) / name for __, name in rows]


def made(workdir) -> int:
    """How many bundles this community has made (its last sequence number)."""
    with open_state(workdir) as state:
        return state.made()


def acknowledge(workdir, sequence: int) -> None:
    """The office holds this bundle: stop sending it, and remove it from the outbox."""
    with open_state(workdir) as state:
        name = state.acknowledge(sequence)
    if name:
        (outbox_dir(workdir) / name).unlink(missing_ok=True)


def clear_acknowledged(workdir, n: int) -> list[int]:
    """Remove from the outbox every bundle numbered up to ``n``: the office holds them all."""
    cleared = []
    for path in pending(workdir):
        sequence = bundle_sequence(path.name)
        if sequence is not None and sequence <= n:
            acknowledge(workdir, sequence)
            cleared.append(sequence)
    return cleared


def bundle_sequence(name: str) -> int | None:
    """The sequence number in a community bundle's file name (ORIGIN-00000007.bundle), or None."""
    match = re.fullmatch(rf"[0-9A-Za-z_-]+-([0-9]{{8,}}){re.escape(bundle.SUFFIX)}", name)
    return int(match.group(1)) if match else None


def delivered(workdir, folder: Path) -> list[Path]:
    """This community's bundles in ``folder`` that the office has acknowledged (and the outbox dropped)."""
    code = read_config(workdir)["code"]
    waiting = {p.name for p in pending(workdir)}
    last = made(workdir)
    return [path for path in sorted(Path(folder).glob(f"{code}-*{bundle.SUFFIX}"))
            if (sequence := bundle_sequence(path.name)) is not None and sequence <= last
            and path.name not in waiting and path.name == bundle.file_name(code, sequence)]


def remove_orphans(workdir, next_sequence: int) -> None:
    """A bundle numbered at or past next_sequence was written by a run that crashed
    before remembering it; it was never sent, and its changes will be sent again."""
    for path in outbox_dir(workdir).glob(f"*{bundle.SUFFIX}"):
        try:
            seq = int(path.stem.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if seq >= next_sequence:
            path.unlink()


def remove_leftovers(folder: Path) -> list[Path]:
    """The temporary files (``.NAME.tmp-PID``, ``.NAME.payload-PID``) a killed run left in ``folder``."""
    removed = []
    for path in Path(folder).glob(f".*{bundle.SUFFIX}.*-*"):
        match = LEFTOVER.fullmatch(path.name)
        if not match or not match["name"].endswith(bundle.SUFFIX) or _running(int(match["pid"]), path):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _running(pid: int, path: Path) -> bool:
    """Is the process that wrote ``path`` still at work?"""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would stop it there
        try:
            return time.time() - path.stat().st_mtime < LEFTOVER_AGE
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def ask_resend(workdir, skipped: int) -> bool:
    """The office gave up bundle ``skipped`` of this community: the next push sends every record
    whole, so what that bundle carried reaches the office after all. Once per skipped bundle."""
    with open_state(workdir) as state, state.transaction():
        if int(state.meta("resend_honoured", 0)) >= skipped:
            return False
        state.set_meta("resend_honoured", skipped)
        # Free text shown by the next push (only truthiness is read back): written in the user's language.
        state.set_meta(RESEND, _("the office could not apply bundle {sequence}: sending every record again").format(
            sequence=skipped))
        return True


def acknowledgement(workdir, data: bytes) -> int:
    """The ``acknowledged`` number of an office acknowledgement, once it is shown to be genuine;
    if it asks for every record again (``resend``, after the office gave up one of this
    community's bundles), the next push sends every record whole."""
    header = genuine_acknowledgement(workdir, data)
    resend = header.fields.get("resend")
    if resend:
        ask_resend(workdir, resend)
    return header["acknowledged"]


def genuine_acknowledgement(workdir, data: bytes) -> bundle.Header:
    """The header of an office acknowledgement, once it is shown to be genuine.

    It must be signed by this community's office and made for this
    community's own key (its ``recipient``, which the signature covers), so
    no one can forge one or hand over another community's; it is read with
    the public keys alone. Raises SyncdbError saying what is wrong.
    """
    folder = Path(workdir)
    office_key = PublicKey.read(state_dir(folder) / "office.pub.json")
    try:
        header = bundle.verify(io.BytesIO(data), {office_key.code: office_key}.get)
    except bundle.BundleError as e:
        raise SyncdbError(_("not signed by this community's office: {error}").format(error=e)) from None
    mine = own_key_id(folder)
    if header.kind != "resolutions" or header.origin != office_key.code or "acknowledged" not in header.fields:
        raise SyncdbError(_("not an acknowledgement (kind {kind}, from {origin})").format(
            kind=header.kind, origin=header.origin))
    if header["recipient"] != mine:
        raise SyncdbError(_("made for key {key}, not for this community's key {mine}: "
                            "it is another community's").format(key=header["recipient"], mine=mine))
    return header


def own_key_id(workdir) -> str:
    """This community's public key id."""
    # The keyring keeps its public half in clear: no secret is needed to know who we are.
    doc = json.loads((state_dir(workdir) / "keyring.json").read_text(encoding="utf-8"))
    return PublicKey.from_json(json.dumps(doc["public"])).id
