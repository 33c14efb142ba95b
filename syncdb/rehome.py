"""Point a community at the right office key, when it was set up with the wrong one.

A community set up with another office's office.pub.json (or before the
office made new keys) encrypts its bundles to a key the office does not
hold: the office refuses them at receipt (`wrong-recipient`) and stores
nothing, and the community keeps them. They cannot be re-encrypted (only
the intended office could open them), so they are set aside in
``.syncdb/unsent/`` and their sequence numbers are used again, and the next
push sends every record whole, each based on every version the community
ever sent. At the office that is a clean apply where it already had those
versions, and a community's later version supersedes its own earlier ones
where it had not (docs/merge.md), so nothing is lost and nothing conflicts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import bundle
from .crypto import PublicKey
from .errors import SyncdbError
from .i18n import _
from .files import write_atomic
from .state import RESEND, open_state, outbox_dir, read_config, state_dir


def set_office_key(workdir_path, office_key_file) -> dict:
    """Encrypt to this office key from now on; returns what was set aside ({"unsent": [file, …]})."""
    folder = Path(workdir_path)
    config = read_config(folder)
    key = PublicKey.read(office_key_file)
    if key.role != "office":
        raise SyncdbError(_("{file} is a {role} key, not an office key; use the office.pub.json "
                            "that `syncdb office init` wrote at the street office").format(
            file=office_key_file, role=key.role))
    if key.id == PublicKey.read(state_dir(folder) / "office.pub.json").id:
        raise SyncdbError(_("{folder} already encrypts to this office key ({key}); nothing was changed").format(
            folder=folder, key=key.id))
    unsent_dir = state_dir(folder) / "unsent"
    with open_state(folder) as state, state.transaction():
        pending = state.unacknowledged()
        # Only bundles made for another key: one made for this key may well be at the office
        # already (carried on a USB stick, not yet acknowledged) and stays to be sent.
        rows = [(seq, name) for seq, name in pending if _recipient(folder, name) not in (key.id, None)]
        if rows:
            later = [seq for seq, name in pending if seq > rows[0][0] and (seq, name) not in rows]
            if later:
                raise SyncdbError(_("bundles {later} were made for office key {key} "
                                    "after bundle {sequence}, made for another key; push them first, "
                                    "then run this again").format(
                    later=", ".join(map(str, later)), key=key.id, sequence=rows[0][0]))
            # The office refused all of them at receipt: their numbers are free again.
            state.forget_bundles([seq for seq, __ in rows])
        # Free text shown by the next push (only truthiness is read back): written in the user's language.
        state.set_meta(RESEND, _("the office key changed: sending every record again"))
    # The key last: a run stopped before it is simply run again (the key still differs).
    moved = []
    for __, name in rows:
        source = outbox_dir(folder) / name
        if source.exists():
            unsent_dir.mkdir(exist_ok=True)
            source.replace(unsent_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{name}")
            moved.append(name)
    write_atomic(state_dir(folder) / "office.pub.json", key.to_json().encode())
    write_atomic(state_dir(folder) / "config.json",
                 json.dumps(dict(config, office_key=key.id), indent=2).encode())
    return {"unsent": moved}


def _recipient(folder: Path, name: str) -> str | None:
    """The office key id an outbox bundle is encrypted to (None if the file is gone or unreadable)."""
    try:
        with open(outbox_dir(folder) / name, "rb") as f:
            header, __ = bundle.read_header(f)
        return header["recipient"]
    except (OSError, bundle.BundleError):
        return None
