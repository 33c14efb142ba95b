"""The 核查 pages (``/-/checks``, ``/-/checks/<name>``) and the dashboard's open cases.

The checks' cases (checks.py, cases.py) as a member of staff may see them,
read-only: people work a case with ``syncdb checks confirm|dismiss``, never
from the site. A masked role sees what the published masked database would
show: the subject and the records' keys masked (as ``checks.show_case``
does), and in the sentence and the figures every sensitive value of the
records concerned masked, and the birth date an ID number carries cut to the
year (projection.birth_date_columns says why). A dismissal's reason, free text
a person wrote, is shown only to those who may see plaintext.

Each case links to the pages of what it names: the person page of every
person (its token is the blind index of the ID number, which is also the
subject a person's case keeps), the household page of every household and
the address page of every house.
"""

from __future__ import annotations

import re

from stdnum.cn import ric

from . import cases, checks, office, pages, projection
from .i18n import N_, _
from .masks import mask
from .store import Store

PAGE = 200  # cases per page of a check
STATES = {"active": N_("open and confirmed"), **cases.STATES, "all": N_("every state")}
ID_LIKE = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
# The figures a built-in check gives, named for staff; a key not listed is shown as the check wrote it.
FIGURES = {
    "months": N_("months paid since the death"), "amount": N_("amount paid since the death (yuan)"),
    "death_date": N_("date of death"), "paid": N_("still paid"), "what": N_("what"),
    "monthly_amount": N_("monthly amount (yuan)"), "permit_expires": N_("permit expired on"),
    "endorsement_due": N_("endorsement due on"), "days": N_("days overdue"), "capacity": N_("approved capacity"),
    "living": N_("people living there"), "residents": N_("registered residents"), "migrants": N_("migrants"),
    "others": N_("other ID numbers"), "heads": N_("heads of household"), "members": N_("members registered here"),
    "id_birth_date": N_("birth date in the ID number"), "id_sex": N_("sex in the ID number"),
    "recorded": N_("as recorded"), "table": N_("table"), "birth_date": N_("birth date"), "sex": N_("sex"),
    "migrant": N_("a migrant"), "assistance": N_("assistance"), "employed": N_("members employed"),
    "highest_base": N_("highest contribution base (yuan)"), "threshold": N_("threshold"), "age": N_("age"),
    "foreign": N_("members registered by another community"),
}
UNSHOWN = {"status", "lapse", "reasons"}  # machine words the sentence already says in words


# ---------------------------------------------------------------- counts

def open_per_community(store: Store) -> dict[str | None, int]:
    """Community -> its open and confirmed cases (a case of no community under None): the dashboard's column."""
    out: dict[str | None, int] = {}
    for per in checks.case_counts(store).values():
        for community, states in per.items():
            out[community] = out.get(community, 0) + sum(states.get(s, 0) for s in cases.ACTIVE)
    return out


def overview(store: Store) -> dict:
    """Every check with its cases per community and state: the 核查 page."""
    counts = checks.case_counts(store)
    known = {c.name: c for c in checks.registered()}
    names = office.names(store.conn)
    codes = sorted(set(office.enrolled_keys(store.conn)) | {c for per in counts.values() for c in per if c})
    rows = [_check_row(name, known.get(name), counts.get(name, {})) for name in sorted(set(known) | set(counts))]
    return {"checks": rows, "communities": [{"code": c, "name": names.get(c, "")} for c in codes],
            "unplaced": any(None in per for per in counts.values())}


def _check_row(name: str, check: checks.Check | None, per: dict) -> dict:
    totals = {s: sum(states.get(s, 0) for states in per.values()) for s in cases.STATES}
    return {"name": name, "title": _(check.title) if check else name, "severity": check.severity if check else "",
            "severity_label": _(checks.SEVERITIES[check.severity]) if check else "",
            "description": _(check.description) if check and check.description else "",
            "running": check is not None, "totals": totals,
            "by": {c: {s: states.get(s, 0) for s in cases.ACTIVE} for c, states in per.items()}}


# ---------------------------------------------------------------- one check's cases

def check_page(store: Store, name: str, plaintext: bool, state: str = "active", community: str | None = None,
               page: int = 1) -> dict | None:
    """One check's cases (``state`` one of STATES' keys), a page of PAGE at a time; None if no such check."""
    row = next((r for r in overview(store)["checks"] if r["name"] == name), None)
    if row is None:
        return None
    states = cases.ACTIVE if state == "active" else tuple(cases.STATES) if state == "all" else (state,)
    # Only the page's cases are read and opened: a check's closed cases of all the years are counted.
    total = cases.count(store, name, community, states)
    pages = (total + PAGE - 1) // PAGE or 1
    page = max(1, min(page, pages))
    found = checks.list_cases(store, name, community, states, masked=False, limit=PAGE, offset=(page - 1) * PAGE)
    view = checks.Records(store)
    shown = [case_view(store, view, item, plaintext) for item in found]
    return dict(row, cases=shown, count=total, page=page, pages=pages)


def case_view(store: Store, view: checks.Records, item: dict, plaintext: bool) -> dict:
    """One case as the page shows it to a role, with links to what it names."""
    records, secrets, links = [], {}, {"household": [], "address": []}
    for r in item["records"]:
        records.append(_record(store, view, r, plaintext, secrets, links))
    subject, person = item["subject"], item["subject_kind"] == "person"
    # The subject's own person page; every record's is beside the record.
    links["person"] = [_person_href(projection.person_token(store.blind_id(subject)))] if person else []
    if person:
        secrets[str(subject)] = mask(subject)
    elif item["subject_kind"] == "household":
        links["household"].insert(0, pages.household_href(store.domains, subject))

    def hide(value):
        return value if plaintext else _hidden(value, secrets)
    return {"id": item["id"], "state": item["state"], "state_label": item["state_label"],
            "community": item["community"], "subject": hide(str(subject)) if person else subject,
            "message": hide(item["message"]),
            "figures": figures(store, hide(item["figures"])), "records": records,
            "links": {k: list(dict.fromkeys(h for h in v if h)) for k, v in links.items()},
            "opened": item["opened"], "changed": item["changed"], "changed_by": item["changed_by"],
            "reason": item["reason"] if plaintext else None, "has_reason": bool(item["reason"])}


def _person_href(token: int) -> str:
    return f"/-/person/{token}"


def _record(store: Store, view: checks.Records, shown: dict, plaintext: bool, secrets: dict, links: dict) -> dict:
    """A record concerned: its table's label, its key (masked for a masked role) and its person page; its
    household and address links added to ``links`` and its sensitive values, with their masks, to ``secrets``."""
    schema = store.tables.get(shown["table"])
    if schema is None:  # a table the office's schemas no longer have
        return {"table": shown["table"], "key": " / ".join(mask(v) for v in shown["key"]), "href": None}
    key = [projection.mask_value(schema.columns[c], v) if not plaintext and schema.columns[c].sensitive
           else _text(store, v, schema, c) for c, v in zip(schema.key, shown["key"])]
    record = view.get(shown["table"], store.blind_key(schema, shown["key"]))
    href = None
    if record is not None:
        person = projection.person_column(schema)
        if person and record[person]:
            href = _person_href(projection.person_token(store.blind_id(record[person])))
        numbers = [record[c] for c in pages.references(schema, pages.HOUSEHOLDS)]
        numbers += [record[c] for c in schema.key] if schema.qualified == pages.HOUSEHOLDS else []
        links["household"] += [pages.household_href(store.domains, n) for n in numbers if n]
        places = [record[c] for c in pages.references(schema, pages.ADDRESSES)]
        links["address"] += [f"/-/address/{p}" for p in places if p and re.fullmatch(r"[0-9A-Za-z]{1,40}", str(p))]
        _secrets_of(schema, record, secrets)
    return {"table": schema.label, "key": " / ".join(str(v) for v in key), "href": href}


def _secrets_of(schema, record, secrets: dict) -> None:
    """Every sensitive value of the record with what a masked role sees of it; birth dates to the year."""
    for name in schema.sensitive_columns:
        value = record[name]
        if value not in (None, ""):
            secrets[str(value)] = str(projection.mask_value(schema.columns[name], value))
            if schema.columns[name].validator == "id_number" and len(str(value)) == 18:
                text = str(value)
                secrets[f"{text[6:10]}-{text[10:12]}-{text[12:14]}"] = text[6:10]
    for name in projection.birth_date_columns(schema):
        value = record[name]
        if isinstance(value, str) and len(value) >= 4:
            secrets[value] = value[:4]


def _hidden(value, secrets: dict):
    """``value`` (text, number or the figures' lists and dicts) with each secret replaced by its mask."""
    if isinstance(value, dict):
        return {k: _hidden(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hidden(v, secrets) for v in value]
    if not isinstance(value, str):
        return value
    for secret in sorted(secrets, key=len, reverse=True):  # the longest first: an ID number before its birth date
        value = value.replace(secret, secrets[secret])
    # A valid ID number no record names (a plugin's figure about someone else): masked all the same.
    return ID_LIKE.sub(lambda m: mask(m.group()) if ric.is_valid(m.group()) else m.group(), value)


def figures(store: Store, given: dict) -> list[dict]:
    """The figures as (label, text) pairs people read: known keys named, lists and records spelled out."""
    return [{"key": k, "label": _label(k), "text": _text(store, v)} for k, v in given.items() if k not in UNSHOWN]


def _label(key: str) -> str:
    return _(FIGURES[key]) if key in FIGURES else key


def _text(store: Store, value, table=None, key: str = "") -> str:
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if isinstance(value, dict):
        schema = store.tables.get(value.get("table", ""))
        return _(", ").join(f"{_label(k)} {_text(store, v, schema, k)}" for k, v in value.items() if k not in UNSHOWN)
    if isinstance(value, (list, tuple)):
        return _("; ").join(_text(store, v) for v in value) if any(isinstance(v, dict) for v in value) \
            else "、".join(_text(store, v) for v in value)
    if value is None:
        return "—"
    if key == "table" and table is not None:
        return table.label
    if table is not None and key in table.columns and table.columns[key].codes:
        return store.domains[table.domain].code_table(table.columns[key].codes).get(str(value), str(value))
    return str(value)
