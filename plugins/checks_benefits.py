"""Built-in cross-domain checks on who is paid (信息比对: 待遇), shipped as a plugin like any an office adds.

- ``benefit_unregistered``: an active 民政 benefit or a 社保 pension being drawn by
  someone with no household registration at this street (no 户籍 person record,
  in any state) who is not a migrant living here with a valid residence permit.
- ``dibao_employed``: a household on active 低保 or 特困 with a member whose
  social security shows employment (an employee scheme paid, not retired) on a
  contribution base above the office's threshold.
- ``elderly_allowance``: 高龄津贴 (benefit_type ``elderly``) paid to someone under
  the age, or not paid to a resident registered and living here who is over it.

docs/checks.md explains the interface and the settings.
"""

from __future__ import annotations

from datetime import date

from syncdb.checks import Check, Finding, Record, Records
from syncdb.hookspecs import hookimpl
from syncdb.i18n import N_, _, ngettext

PERSONS, BENEFITS, ENROLMENTS = "huji.persons", "minzheng.benefits", "shebao.enrolments"
ASSISTANCE, MIGRANTS = "minzheng.assistance", "liudong.migrants"
PENSIONS = ("110", "120", "170")  # 险种 AAE140: the three basic pension schemes
EMPLOYEE_SCHEMES = ("110", "120", "310")  # 险种 only an employer pays into: 职工养老 (企业, 机关事业), 职工医保
PAYING = "1"  # 参保状态 参保缴费
RELIEF = ("1", "2")  # 救助类别: 最低生活保障, 特困人员救助供养
ELDERLY = "elderly"  # 高龄津贴 in schemas/minzheng.toml's benefit_type
# A changed enrolment names a person, not a household: find() turns this prefix into the person's household.
BY_PERSON = "id:"


def _date(value) -> date | None:
    try:
        return date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _by_id(table: str, record: Record):
    return [record.get("id_number")]


def born(id_number: str) -> date | None:
    """The birth date the ID number carries (GB 11643: characters 7 to 14)."""
    return _date(f"{id_number[6:10]}-{id_number[10:12]}-{id_number[12:14]}") if id_number else None


def age(birth: date, today: date) -> int:
    """Whole years of age on ``today``."""
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _wanted(records: Records, table: str, subjects) -> list[Record]:
    return records.rows(table) if subjects is None else records.where(table, "id_number", subjects)


# ---------------------------------------------------------------- paid, yet not registered here

def _payments(records: Records, subjects) -> dict[str, list[Record]]:
    """ID number -> the active benefits and pensions being drawn."""
    paid: dict[str, list[Record]] = {}
    for b in _wanted(records, BENEFITS, subjects):
        if b["status"] == "active":
            paid.setdefault(b["id_number"], []).append(b)
    for e in _wanted(records, ENROLMENTS, subjects):
        if e["insurance_type"] in PENSIONS and e["retired"] == "1" and e["status"] == PAYING:
            paid.setdefault(e["id_number"], []).append(e)
    return paid


def _permit_valid(migrant: Record, today: date) -> bool:
    issued, expires = _date(migrant["permit_issued"]), _date(migrant["permit_expires"])
    return (migrant["leaving_date"] is None and issued is not None and expires is not None
            and issued <= today <= expires)


def _find_unregistered(records: Records, subjects, settings):
    today = settings["today"]
    paid = _payments(records, subjects)
    # By community: a community pays whom it registers or houses. Another community's record of the person
    # clears nothing: with owner-scoped merges, that is the one record a stolen community key could add.
    registered = {(p["id_number"], p["community_code"]) for p in records.where(PERSONS, "id_number", paid)}
    migrants = {(m["id_number"], m["community_code"]): m for m in records.where(MIGRANTS, "id_number", paid)}
    anywhere = {i for i, __ in registered}
    for id_number, paying in sorted(paid.items()):
        rows = [r for r in paying if (id_number, r["community_code"]) not in registered
                and not _permit_valid_at(migrants.get((id_number, r["community_code"])), today)]
        if not rows:
            continue
        migrant = next((migrants[id_number, r["community_code"]] for r in rows
                        if (id_number, r["community_code"]) in migrants), None)
        what = "、".join(records.meaning(r.table, "benefit_type" if r.table == BENEFITS else "insurance_type",
                                        r["benefit_type"] if r.table == BENEFITS else r["insurance_type"])
                        for r in rows)
        figures = {"paid": what, "monthly_amount": round(sum(float(r["monthly_amount"] or 0) for r in rows
                                                             if r.table == BENEFITS), 2), "migrant": migrant is not None}
        if id_number in anywhere:
            message = _("paid ({what}) by a community where the person is not registered; the household "
                        "registration is in another community of this street").format(what=what)
            figures["registered_elsewhere"] = True
        elif migrant is None:
            message = _("paid ({what}), yet not registered in this street's household registration nor "
                        "living here as a migrant").format(what=what)
        else:
            message = _("paid ({what}), yet not registered in this street's household registration, and "
                        "recorded as a migrant with no valid residence permit").format(what=what)
        yield Finding(id_number, message, [*rows, *([migrant] if migrant else [])], figures,
                      community=rows[0]["community_code"])


def _permit_valid_at(migrant: Record | None, today: date) -> bool:
    return migrant is not None and _permit_valid(migrant, today)


BENEFIT_UNREGISTERED = Check(
    name="benefit_unregistered", title=N_("Paid, yet not registered at this street"),
    reads=(BENEFITS, ENROLMENTS, PERSONS, MIGRANTS), subject="person", find=_find_unregistered,
    subjects_of=_by_id, severity="high",
    description=N_("An active civil-affairs benefit or a pension being drawn by someone with no household "
                   "registration at this street who is not a migrant living here with a valid residence permit."))


# ---------------------------------------------------------------- 低保 / 特困 with an employed member

def _households_of(table: str, record: Record):
    if table == ENROLMENTS:
        return [BY_PERSON + record.get("id_number")] if record.get("id_number") else []
    return [record.get("household_no")]


def _household_numbers(records: Records, subjects) -> set[str] | None:
    if subjects is None:
        return None
    numbers = {s for s in subjects if not s.startswith(BY_PERSON)}
    people = [s[len(BY_PERSON):] for s in subjects if s.startswith(BY_PERSON)]
    numbers |= {p["household_no"] for p in records.where(PERSONS, "id_number", people) if p["household_no"]}
    return numbers


def _employed(records: Records, members: list[Record], above: float) -> list[Record]:
    """The members' employee enrolments paid on a base above ``above`` (a retiree draws, not earns)."""
    return [e for e in records.where(ENROLMENTS, "id_number", [m["id_number"] for m in members])
            if e["insurance_type"] in EMPLOYEE_SCHEMES and e["status"] == PAYING and e["retired"] != "1"
            and e["monthly_base"] is not None and float(e["monthly_base"]) > above]


def _find_employed(records: Records, subjects, settings):
    above = float(settings["local_standard"]) * float(settings["times"])
    numbers = _household_numbers(records, subjects)
    relief = records.rows(ASSISTANCE) if numbers is None else records.where(ASSISTANCE, "household_no", numbers)
    by_household: dict[str, list[Record]] = {}
    for a in relief:
        if a["assistance_type"] in RELIEF and a["status"] == "active":
            by_household.setdefault(a["household_no"], []).append(a)
    # Every household's members and their enrolments read at once; each household's look-ups below are in memory.
    everyone = records.where(PERSONS, "household_no", by_household)
    records.where(ENROLMENTS, "id_number", [p["id_number"] for p in everyone if p["status"] == "normal"])
    for number, grants in sorted(by_household.items()):
        members = [p for p in records.where(PERSONS, "household_no", [number]) if p["status"] == "normal"]
        jobs = _employed(records, members, above)
        if not jobs:
            continue
        earners = {e["id_number"] for e in jobs}
        top = max(float(e["monthly_base"]) for e in jobs)
        what = "、".join(records.meaning(ASSISTANCE, "assistance_type", a["assistance_type"]) for a in grants)
        message = ngettext("on {what}, yet {n} member is employed with a contribution base of up to {base} yuan "
                           "a month, above the office's threshold of {above} yuan",
                           "on {what}, yet {n} members are employed with a contribution base of up to {base} "
                           "yuan a month, above the office's threshold of {above} yuan", len(earners)).format(
            what=what, n=len(earners), base=f"{top:.0f}", above=f"{above:.0f}")
        yield Finding(number, message, [*grants, *[m for m in members if m["id_number"] in earners], *jobs],
                      {"assistance": what, "employed": len(earners), "highest_base": top, "threshold": above},
                      community=grants[0]["community_code"])


DIBAO_EMPLOYED = Check(
    name="dibao_employed", title=N_("Subsistence allowance, yet a member employed"),
    reads=(ASSISTANCE, PERSONS, ENROLMENTS), subject="household", find=_find_employed,
    subjects_of=_households_of, severity="high",
    lookups={ASSISTANCE: ("household_no",), PERSONS: ("household_no",)},  # a household's relief and members
    # 1,430 元 a person a month: Dongguan's 低保标准; three times it is a wage no 低保 household has.
    settings={"local_standard": 1430, "times": 3},
    description=N_("A household on active subsistence allowance (低保) or destitute support (特困) with a member "
                   "whose employee insurance is paid on a contribution base above local_standard × times."))


# ---------------------------------------------------------------- 高龄津贴 and age

def _find_elderly(records: Records, subjects, settings):
    today, threshold = settings["today"], int(settings["age"])
    paid: dict[str, list[Record]] = {}
    for b in _wanted(records, BENEFITS, subjects):
        if b["benefit_type"] == ELDERLY:
            paid.setdefault(b["id_number"], []).append(b)
    for id_number, rows in sorted(paid.items()):
        active = [b for b in rows if b["status"] == "active"]
        years = age(born(id_number), today) if born(id_number) else None
        if active and years is not None and years < threshold:
            message = _("paid the allowance for the elderly at {age}, under the age of {threshold}").format(
                age=years, threshold=threshold)
            yield Finding(id_number, message, active, {"age": years, "threshold": threshold, "lapse": "under"},
                          evidence=["under", [b.key_values() for b in active]], community=active[0]["community_code"])
    for person in _wanted(records, PERSONS, subjects):
        birth = born(person["id_number"])
        if person["status"] != "normal" or birth is None or age(birth, today) < threshold:
            continue
        # A suspended allowance was stopped by someone who knew; only one never granted or ended is a case.
        # Only the person's own community's allowance counts: another's (a stolen key's) clears nothing.
        if any(b["status"] in ("active", "suspended") and b["community_code"] == person["community_code"]
               for b in paid.get(person["id_number"], ())):
            continue
        years = age(birth, today)
        message = _("{age} years old and living here, yet not paid the allowance for the elderly (from "
                    "{threshold})").format(age=years, threshold=threshold)
        # The age grows by itself: the evidence is who and since when they were over it, not the count.
        yield Finding(person["id_number"], message, [person], {"age": years, "threshold": threshold, "lapse": "over"},
                      evidence=["over", threshold], community=person["community_code"])


ELDERLY_ALLOWANCE = Check(
    name="elderly_allowance", title=N_("Allowance for the elderly and age disagree"),
    reads=(PERSONS, BENEFITS), subject="person", find=_find_elderly, subjects_of=_by_id, severity="medium",
    settings={"age": 80},
    description=N_("The allowance for the elderly (高龄津贴) paid to someone under the age, or not paid to a resident "
                   "registered and living here who is over it."))


@hookimpl
def cross_checks():
    return [BENEFIT_UNREGISTERED, DIBAO_EMPLOYED, ELDERLY_ALLOWANCE]
