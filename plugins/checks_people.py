"""Built-in cross-domain checks on who a person is (信息比对: 人员), shipped as a plugin like any an office adds.

- ``probable_duplicate``: two ID numbers that are probably one person: the same
  name and birth date, or the same name and ID numbers one digit apart (a
  mistyped digit). Matched in memory on the records as read; nothing derived
  from a name is kept. A person reviews the case: records are never merged by
  a check, and one ID number registered in two communities stays a conflict in
  the conflict queue (it is one ID number, not two).
- ``household_head``: a household whose members registered here have no 户主
  (与户主关系 02) or several, or whose household record names as 户主 someone
  other than the member coded 02; only the members the household's own
  community registers count, and a member another community registers in it
  is a case too.
- ``birth_sex_mismatch``: an ID number whose records disagree on the birth date
  or the sex, with each other or with what the ID number itself says.

docs/checks.md explains the interface.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from heapq import merge
from itertools import islice


from syncdb.checks import Check, Finding, Record, Records
from syncdb.hookspecs import hookimpl
from syncdb.i18n import N_, _, ngettext

PERSONS, MIGRANTS, HOUSEHOLDS = "huji.persons", "liudong.migrants", "huji.households"
PEOPLE = (PERSONS, MIGRANTS)  # the tables whose records are people with a name and a birth date
HEAD = "02"  # GB/T 4761 与户主关系: 户主
SEXES = ("1", "2")  # GB/T 2261.1: 0 未知 and 9 未说明 say nothing to disagree with
BODY = 17  # an ID number's characters before its check character
MAX_LISTED = 20  # the twins a probable-duplicate case lists; more are said, not listed
# The check character is (1 - 2 * body read in base 13) mod 11 (stdnum's calc_check_digit): each digit's weight.
_WEIGHTS = [pow(13, BODY - 1 - i, 11) for i in range(BODY)]


def _by_id(table: str, record: Record):
    return [record.get("id_number")]


# ---------------------------------------------------------------- probable duplicates

def _neighbours(id_number: str) -> list[str]:
    """Every valid ID number whose first 17 characters differ from this one's in exactly one digit.

    ISO 7064 MOD 11-2 makes any two valid numbers differ in at least two
    characters (a mistyped digit changes the check character too), so "one
    character apart" is judged on the body before it. The check character of
    each neighbour follows from this one's sum and the changed digit's weight
    (153 neighbours a person, asked after every merge: worked out whole, they
    cost more than the look-ups).
    """
    body = id_number[:BODY]
    if len(body) != BODY or not body.isdigit():
        return []
    total, out = (1 - 2 * int(body, 13)) % 11, []
    for i, digit in enumerate(body):
        head, tail, was, weight = body[:i], body[i + 1:], int(digit), _WEIGHTS[i]
        for other in range(10):
            if other != was:
                check = (total - 2 * (other - was) * weight) % 11
                out.append(f"{head}{other}{tail}{'X' if check == 10 else check}")
    return out


def _one_apart(a: str, b: str) -> bool:
    return sum(x != y for x, y in zip(a[:BODY], b[:BODY])) == 1


def _alike(a: Record, b: Record) -> str | None:
    """Why two people's records are probably one person (the reason's machine word), or None."""
    if a["id_number"] == b["id_number"] or a["name"] != b["name"]:
        return None
    if a["birth_date"] == b["birth_date"]:
        return "birth_date"
    return "id_number" if _one_apart(a["id_number"], b["id_number"]) else None


class People:
    """The people's records (residents and migrants) by ID number, and their likely twins."""

    def __init__(self, records: Records, subjects):
        self.records = records
        self.whole = subjects is None
        self.by_id: dict[str, list[Record]] = {}
        if self.whole:
            for table in PEOPLE:
                self._add(records.rows(table))

    def _add(self, rows) -> None:
        for r in rows:
            known = self.by_id.setdefault(r["id_number"], [])
            if all(r is not k for k in known):
                known.append(r)

    def of(self, ids) -> None:
        """Read the records of these ID numbers, those born the same day, and those one digit apart."""
        if self.whole:
            return
        near = {n for i in ids for n in _neighbours(i)}
        for table in PEOPLE:
            own = self.records.where(table, "id_number", ids)
            self._add(own)
            self._add(self.records.where(table, "birth_date", {r["birth_date"] for r in own}))
            self._add(self.records.where(table, "id_number", near))

    def groups(self) -> dict[tuple, list[str]]:
        """Key -> the ID numbers alike by it (in order): the same name and birth date, or the same name and
        body but for the digit at one place. Built in memory only, and never pair by pair: N people of one
        name and birth date (a community can send them) cost N here, not N²."""
        found: dict[tuple, set[str]] = {}
        for id_number, rows in self.by_id.items():
            for r in rows:
                name = r["name"]
                found.setdefault((name, r["birth_date"]), set()).add(id_number)
                for i in range(BODY):
                    found.setdefault((name, i, id_number[:i] + id_number[i + 1:BODY]), set()).add(id_number)
        return {key: sorted(ids) for key, ids in found.items() if len(ids) > 1}


def _keys_of(groups: dict[tuple, list[str]]) -> dict[str, list[tuple]]:
    keys: dict[str, list[tuple]] = {}
    for key, ids in groups.items():
        for i in ids:
            keys.setdefault(i, []).append(key)
    return keys


def _later(groups, keys, id_number: str) -> list[str]:
    """The first MAX_LISTED + 1 twins after this ID number, in order (one more than a case lists,
    to know whether there are more)."""
    tails = [groups[k][bisect_right(groups[k], id_number):] for k in keys.get(id_number, ())]
    return list(islice(dict.fromkeys(merge(*(t[:MAX_LISTED + 1] for t in tails))), MAX_LISTED + 1))


def _earlier(groups, keys, subjects) -> set[str]:
    """The twins before any subject in order: their cases list the subjects."""
    last: dict[tuple, str] = {}
    for s in subjects:
        for key in keys.get(s, ()):
            last[key] = max(last.get(key, s), s)
    out: set[str] = set()
    for key, s in last.items():
        out.update(groups[key][:bisect_left(groups[key], s)])
    return out


def _find_duplicates(records: Records, subjects, settings):
    people = People(records, subjects)
    if subjects is not None:
        people.of(set(subjects))
        # A twin before a subject files the pair: read all of its own twins too.
        groups = people.groups()
        people.of(_earlier(groups, _keys_of(groups), set(subjects)) - set(subjects))
    groups = people.groups()
    keys = _keys_of(groups)
    wanted = set(keys) if subjects is None else {s for s in subjects if s in keys} | _earlier(groups, keys, set(subjects))
    for id_number in sorted(wanted):
        # One case per ID number with twins after it, filed under the first; it lists MAX_LISTED of them.
        later = _later(groups, keys, id_number)
        pairs = [(t, _pair_reason(people.by_id[id_number], people.by_id[t])) for t in later[:MAX_LISTED]]
        pairs = [(t, why) for t, why in pairs if why]
        if not pairs:
            continue
        own = people.by_id[id_number]
        others = [r for t, __ in pairs for r in people.by_id[t]]
        why = "；".join(dict.fromkeys(_(REASONS[why]) for __, why in pairs))
        figures = {"others": len(pairs), "reasons": sorted({why for __, why in pairs})}
        if len(later) > MAX_LISTED:
            figures["more"] = True
            message = _("probably the same person as more than {n} other records with other ID numbers (the "
                        "first {n} listed): {why}").format(n=len(pairs), why=why)
        else:
            message = _("probably the same person as {n} other record(s) with another ID number: {why}").format(
                n=len(pairs), why=why)
        yield Finding(id_number, message, [*own, *others], figures, community=own[0]["community_code"])


REASONS = {"birth_date": N_("the same name and birth date"),
           "id_number": N_("the same name and ID numbers one digit apart")}


def _pair_reason(mine: list[Record], theirs: list[Record]) -> str | None:
    for a in mine:
        for b in theirs:
            why = _alike(a, b)
            if why:
                return why
    return None


PROBABLE_DUPLICATE = Check(
    name="probable_duplicate", title=N_("Probably one person under two ID numbers"),
    reads=PEOPLE, subject="person", find=_find_duplicates, subjects_of=_by_id, severity="medium",
    # Who is alike depends on these alone: a night's new phone numbers compare no one again.
    watches={t: frozenset({"id_number", "name", "birth_date", "community_code"}) for t in PEOPLE},
    lookups={t: ("birth_date",) for t in PEOPLE},  # who else was born that day
    description=N_("Two ID numbers with the same name and birth date, or the same name and ID numbers one digit "
                   "apart, among residents and migrants: for a person to review; never merged by the check."))


# ---------------------------------------------------------------- one head per household

def _household_of(table: str, record: Record):
    return [record.get("household_no")]


def _head_problem(household: Record, heads: list[Record]) -> tuple[str, str] | None:
    if len(heads) != 1:
        return "heads", _("{n} of the members registered here are coded head of household; exactly one must be") \
            .format(n=len(heads))
    if household["head_id_number"] != heads[0]["id_number"]:
        return "record", _("the household record names as head someone other than the member coded head of household")
    return None


def _foreign_problem(foreign: list[Record]) -> str:
    communities = sorted({p["community_code"] or "-" for p in foreign})
    return ngettext("{n} member is registered in this household by another community ({communities}), which "
                    "does not keep the household", "{n} members are registered in this household by another "
                    "community ({communities}), which does not keep the household", len(foreign)).format(
        n=len(foreign), communities="、".join(communities))


def _find_heads(records: Records, subjects, settings):
    households = records.rows(HOUSEHOLDS) if subjects is None else records.where(HOUSEHOLDS, "household_no", subjects)
    records.where(PERSONS, "household_no", [h["household_no"] for h in households])  # all at once, then in memory
    for household in households:
        registered = [p for p in records.where(PERSONS, "household_no", [household["household_no"]])
                      if p["status"] == "normal"]
        # Only the community that keeps the household counts its members: another one (a stolen key) could
        # otherwise add a head to clear its case or make one. A member it registers here is a case of its own.
        members = [p for p in registered if p["community_code"] == household["community_code"]]
        foreign = [p for p in registered if p["community_code"] != household["community_code"]]
        heads = [p for p in members if p["relationship"] == HEAD]
        found = _head_problem(household, heads) if members else None  # nobody registered here: no head is owed
        if found is None and not foreign:
            continue
        lapse, message = found or ("foreign", _foreign_problem(foreign))
        figures = {"heads": len(heads), "members": len(members), "lapse": lapse}
        if foreign:
            if found:
                message = _("{problem}; {other}").format(problem=message, other=_foreign_problem(foreign))
            figures["foreign"] = sorted({p["community_code"] or "-" for p in foreign})
        yield Finding(household["household_no"], message, [household, *heads, *foreign], figures,
                      community=household["community_code"])


HOUSEHOLD_HEAD = Check(
    name="household_head", title=N_("Household without exactly one head"),
    reads=(HOUSEHOLDS, PERSONS), subject="household", find=_find_heads, subjects_of=_household_of,
    severity="medium", lookups={PERSONS: ("household_no",)},  # a household's members
    description=N_("A household whose members registered here have no head of household (与户主关系 02) or "
                   "several, or whose household record names another person as head; or a member registered in "
                   "it by a community that does not keep the household."))


# ---------------------------------------------------------------- birth date and sex

def _said(id_number: str) -> tuple[str, str]:
    """(birth date, sex) as the ID number says them: characters 7–14, and the 17th odd for a man."""
    return f"{id_number[6:10]}-{id_number[10:12]}-{id_number[12:14]}", "1" if int(id_number[16]) % 2 else "2"


DISAGREE = {"birth_date": N_("the records of this ID number disagree on the birth date, with each other or with "
                             "the ID number"),
            "sex": N_("the records of this ID number disagree on the sex, with each other or with the ID number"),
            "both": N_("the records of this ID number disagree on the birth date and the sex, with each other or "
                       "with the ID number")}


def _find_mismatch(records: Records, subjects, settings):
    by_id: dict[str, list[Record]] = {}
    for table in PEOPLE:
        for r in records.rows(table) if subjects is None else records.where(table, "id_number", subjects):
            by_id.setdefault(r["id_number"], []).append(r)
    for id_number, rows in sorted(by_id.items()):
        birth, sex = _said(id_number)
        births = {birth} | {r["birth_date"] for r in rows if r["birth_date"]}
        sexes = {sex} | {r["sex"] for r in rows if r["sex"] in SEXES}
        if len(births) == 1 and len(sexes) == 1:
            continue
        what = ("both" if len(births) > 1 and len(sexes) > 1 else "birth_date" if len(births) > 1 else "sex")
        message = _(DISAGREE[what])
        yield Finding(id_number, message, rows,
                      {"id_birth_date": birth, "id_sex": sex,
                       "recorded": [{"table": r.table, "birth_date": r["birth_date"], "sex": r["sex"]} for r in rows]},
                      community=rows[0]["community_code"])


BIRTH_SEX_MISMATCH = Check(
    name="birth_sex_mismatch", title=N_("Birth date or sex disagree"),
    reads=PEOPLE, subject="person", find=_find_mismatch, subjects_of=_by_id, severity="medium",
    description=N_("An ID number whose records in household registration and the floating population disagree on "
                   "the birth date or the sex, with each other or with what the ID number itself says."))


@hookimpl
def cross_checks():
    return [PROBABLE_DUPLICATE, HOUSEHOLD_HEAD, BIRTH_SEX_MISMATCH]
