"""Sample communities: realistic, valid and deterministic working databases.

``generate`` writes every domain of one community, as a Dongguan community
looks: standard addresses, grids, houses and rentals, units (sample_places.py);
households and their members (sample_people.py) with valid ID numbers
(sample_ids.py) and plausible origins (sample_origins.py); a floating
population larger than the registered one, with residence permits
(sample_migrants.py); social security enrolments, civil affairs assistance
per household and benefits per person (here); and a few deliberate cases for
the checks across domains (sample_planted.py).

The same code, seed and resident count give byte-identical files: Faker is
seeded once to fill pools of names and companies, seeded Randoms make every
other choice (one each for people, places, migrants and planted cases, so
that adding migrants never changes a resident), and rows go in in the order
they were made.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from datetime import date, timedelta
from pathlib import Path

from . import sample_planted, validate, workdir
from .errors import SyncdbError
from .i18n import _
from .sample_ids import Regions
from .sample_migrants import MIGRANTS_PER_RESIDENT, Migrants
from .sample_migrants import row as migrant_row
from .sample_people import TODAY, Community, Household, Person, Pools, age, birthday, years
from .sample_places import Places

# In the order their tables are written and counted.
DOMAINS = ("huji", "shebao", "minzheng", "wangge", "dizhi", "fangwu", "danwei", "liudong")
ENROLMENT = ("id_number", "insurance_type", "status", "retired", "retired_date", "start_date", "end_date", "employer",
             "monthly_base", "community_code")
# 险种类型 (AAE140) and 参保状态, as schemas/shebao.toml codes them.
EMPLOYEE_PENSION, RESIDENT_PENSION_SCHEME, UNEMPLOYMENT = "110", "170", "210"
EMPLOYEE_MEDICAL, RESIDENT_MEDICAL_CARE, INJURY = "310", "390", "410"
PAYING, PAUSED, ENDED = "1", "2", "3"
BENEFIT = ("id_number", "benefit_type", "status", "monthly_amount", "start_date", "end_date", "community_code")
ASSISTANCE = ("household_no", "assistance_type", "status", "monthly_amount", "members", "start_date", "end_date",
              "community_code")
# When the schemes began, so that no enrolment starts before its scheme existed.
EMPLOYEE_SCHEMES = date(1995, 1, 1)  # 城镇职工养老保险, unified in 1995–97
RESIDENT_MEDICAL = date(2007, 7, 1)  # 城镇居民医保 pilots
RESIDENT_PENSION = date(2009, 10, 1)  # 新农保 / 城乡居民养老保险
ELDERLY_ALLOWANCE = date(2010, 1, 1)  # 高龄津贴
DISABILITY_SUBSIDY = date(2016, 1, 1)  # 残疾人两项补贴


def generate(directory, code: str, residents: int, seed: int, domains: dict) -> dict[str, int]:
    """Write a sample community's working databases into ``directory``.

    Returns the number of rows written per table, keyed ``domain.table``.
    Refuses a code that is no community code, and a folder whose working
    databases already hold records. Writes the domains of ``domains`` that
    it knows (DOMAINS), and of each the tables and columns the schema has.
    """
    try:
        # The validator's own rule, so that no sample record can fail it.
        validate.community_code(code)
    except validate.Invalid as e:
        raise SyncdbError(_("community code {why}").format(why=e)) from None
    if residents < 1:
        raise SyncdbError(_("a sample community needs at least one resident, not {residents}").format(
            residents=residents))
    wanted = {d: domains[d] for d in DOMAINS if d in domains}
    if not wanted:
        raise SyncdbError(_("the schemas declare none of the domains {domains}; nothing to generate").format(
            domains=", ".join(DOMAINS)))
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SyncdbError(_("{directory} is a file; give a folder for the sample community").format(
            directory=directory))
    _refuse_data(directory, wanted)

    rows = _build(code, residents, seed)
    workdir.create(directory, wanted)
    counts = {}
    for name, domain in wanted.items():
        tables = {t: table_rows for t, table_rows in rows.items()
                  if t.startswith(name + ".") and t.split(".")[1] in domain.tables}
        _write(workdir.db_path(directory, name), tables, domain)
        counts.update((t, len(table_rows)) for t, table_rows in tables.items())
    return counts


def _build(code: str, residents: int, seed: int) -> dict[str, list[dict]]:
    """Every table's rows, as dicts keyed by column name."""
    # hash() of a str changes from run to run; a digest does not.
    code_hash = int.from_bytes(hashlib.sha256(code.encode()).digest()[:8], "big")
    rng = random.Random(seed ^ code_hash)
    # One stream per concern: the first residents' records never depend on how many come after.
    streams = {name: random.Random(f"{seed}:{code}:{name}")
               for name in ("places", "migrants", "shebao", "minzheng", "planted")}
    pools = Pools.from_faker(seed)
    regions = Regions()
    names = [streams["places"].choice(pools.surnames) + streams["places"].choice(pools.male_names + pools.female_names)
             for _ in range(300)]
    places = Places(code, streams["places"], regions.place(code[:6]) or regions.provinces.get(code[:2], ""),
                    pools.companies, names)
    community = Community(code, rng, pools, regions, places)
    households = []
    placed = 0
    while placed < residents:
        household = community.household(residents - placed)
        households.append(household)
        placed += len(household.members)
    migrants = Migrants(community, streams["migrants"]).make(round(residents * MIGRANTS_PER_RESIDENT))
    places.amenities()
    places.draw_grids(names, lambda: _mobile(streams["places"], pools))
    enrolments = [dict(zip(ENROLMENT, r)) for h in households for p in h.members
                  for r in _enrolments(p, h, code, streams["shebao"], pools.companies)]
    benefit_rows, assistance_rows = _benefits(households, code, streams["minzheng"], _earning(enrolments))
    benefits = [dict(zip(BENEFIT, r)) for r in benefit_rows]
    assistance = [dict(zip(ASSISTANCE, r)) for r in assistance_rows]
    persons = [p for h in households for p in h.members]
    household_rows = [_household_row(h, code) for h in households]
    sample_planted.plant(streams["planted"], residents, persons, benefits, migrants, places.lodgings,
                         households=households, household_rows=household_rows, enrolments=enrolments,
                         assistance=assistance, companies=pools.companies)
    return {
        "huji.households": household_rows,
        "huji.persons": [_person_row(p, h, code) for h in households for p in h.members],
        "shebao.enrolments": enrolments,
        "minzheng.benefits": benefits,
        "minzheng.assistance": assistance,
        "wangge.grids": places.grids,
        "dizhi.addresses": places.addresses,
        "fangwu.houses": places.houses,
        "danwei.units": places.units,
        "liudong.migrants": [migrant_row(m, code) for m in migrants],
    }


def _mobile(rng: random.Random, pools: Pools) -> str:
    return rng.choice(pools.phone_prefixes) + f"{rng.randrange(10**8):08d}"


def _household_row(h: Household, code: str) -> dict:
    return {"household_no": h.number, "household_type": h.type, "head_id_number": h.head.id_number,
            "address": h.address, "address_code": h.address_code, "community_code": code}


def _person_row(p: Person, h: Household, code: str) -> dict:
    reason, destination = p.deregistration
    return {
        "id_number": p.id_number, "name": p.name, "sex": p.sex, "ethnicity": p.ethnicity,
        "birth_date": p.birth.isoformat(), "household_no": h.number, "relationship": p.relationship,
        "marital_status": p.marital, "phone": p.phone, "address": h.address, "community_code": code,
        "status": p.status, "former_name": p.former_name, "native_place": p.native_place,
        "education": p.education, "workplace": p.workplace, "address_code": h.address_code,
        "move_in_date": p.move_in and p.move_in.isoformat(), "death_date": p.death and p.death.isoformat(),
        "deregistration_reason": reason, "deregistration_destination": destination,
    }


def _refuse_data(directory: Path, domains: dict) -> None:
    """Never write sample data over someone's records."""
    for domain in domains:
        path = workdir.db_path(directory, domain)
        if not path.exists() or path.stat().st_size == 0:
            continue
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
                held = sum(conn.execute(f"SELECT count(*) FROM [{t}]").fetchone()[0] for t in tables)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise SyncdbError(_("{path} exists and is not an empty working database ({error}); "
                                "write the sample community into a new folder").format(path=path, error=e))
        if held:
            raise SyncdbError(_("{path} already holds {held} record(s); sample data is never written over "
                                "existing data: choose a new folder, e.g. {directory}-sample").format(
                path=path, held=held, directory=directory))


def _write(path: Path, tables: dict[str, list[dict]], domain) -> None:
    """Insert the rows; a column the schema lacks is left out (an older or trimmed schema)."""
    conn = workdir.connect(path)
    try:
        # A fresh file that nobody else has open: skip the rollback journal and
        # fsyncs while filling it. Neither setting outlives this connection.
        conn.execute("PRAGMA journal_mode = MEMORY")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        for qualified, rows in tables.items():
            if not rows:
                continue
            table = qualified.split(".")[1]
            columns = [c for c in domain.tables[table].columns if c in rows[0]]
            names = ", ".join(f"[{c}]" for c in columns)
            marks = ", ".join("?" * len(columns))
            conn.executemany(f"INSERT INTO [{table}] ({names}) VALUES ({marks})",
                             ([row[c] for c in columns] for row in rows))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


def _between(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randint(0, max(0, (last - first).days)))


def _ended(rng, start: date, status: str, ended: str = "ended") -> tuple[str, str | None]:
    """The status and, for an ended row only (its code ``ended``), an end date between start and today."""
    if status != ended:
        return status, None
    return status, _between(rng, max(start, TODAY - years(3)), TODAY).isoformat()


def _enrolments(person: Person, household: Household, code: str, rng: random.Random,
                companies: list[str]) -> list[tuple]:
    """One person's 参保登记: employee or resident schemes by age, or none."""
    years_old = age(person.birth, person.death or TODAY)
    retirement = 60 if person.sex == "1" else 55
    if years_old < 18:
        if rng.random() < 0.05:
            return []
        start = max(person.birth + timedelta(days=rng.randint(0, 120)), RESIDENT_MEDICAL)
        plan = [(RESIDENT_MEDICAL_CARE, PAYING, min(start, TODAY), None, None, None)]
    else:
        r = rng.random()
        employee = r < (0.62 if years_old < retirement else 0.55)
        resident = not employee and r < (0.9 if years_old < retirement else 0.97)
        if employee:
            plan = _employee(person, household, rng, companies, retired=years_old >= retirement)
        elif resident:
            plan = _resident(person, rng, years_old)
        else:
            return []
    if person.death:
        # Insurance ends on the day of death; none starts after it.
        return [_enrolment(person, kind, ENDED, start, person.death.isoformat(), employer, base, retired, code)
                for kind, _, start, employer, base, retired in plan if start <= person.death]
    if person.status == "moved_out" and rng.random() < 0.6:
        plan = [(kind, ENDED, start, None, None, retired) for kind, _, start, _, _, retired in plan]
    rows = []
    for kind, status, start, employer, base, retired in plan:
        status, end = _ended(rng, start, status, ENDED)
        rows.append(_enrolment(person, kind, status, start, end, employer, base, retired, code))
    return rows


def _enrolment(person: Person, kind, status, start: date, end, employer, base, retired: date | None, code) -> tuple:
    """A row in ENROLMENT order: retirement (是否退休, 退休日期) is kept apart from the payment status."""
    return (person.id_number, kind, status, "1" if retired else "0", retired and retired.isoformat(),
            start.isoformat(), end, employer, base, code)


def _employee(person, household, rng, companies, retired) -> list[tuple]:
    first = max(birthday(person.birth, 18), EMPLOYEE_SCHEMES)
    if retired:
        # 法定退休年龄: 60 for men, 55 here for women; insured on, paying nothing, drawing the pension.
        retired_on = birthday(person.birth, 60 if person.sex == "1" else 55)
        last = max(first, min(retired_on, TODAY))
        start = _between(rng, first, last)
        employer = rng.choice(companies) if rng.random() < 0.7 else None
        return [(EMPLOYEE_PENSION, PAYING, start, employer, None, max(start, retired_on)),
                (EMPLOYEE_MEDICAL, PAYING, start, employer, None, max(start, retired_on))]
    start = _between(rng, first, min(first + years(8), TODAY))
    employer = household.employer or person.workplace or rng.choice(companies)
    person.workplace = employer  # 服务处所 and the insured employer agree
    # Bases cluster a little above the local floor; rounded to 100 yuan.
    base = float(min(30000, max(4000, round(rng.lognormvariate(8.9, 0.45), -2))))
    status = rng.choices([PAYING, PAUSED, ENDED], [92, 6, 2])[0]
    kinds = [EMPLOYEE_PENSION, EMPLOYEE_MEDICAL]
    kinds += [k for k in (UNEMPLOYMENT, INJURY) if rng.random() < 0.75]
    return [(kind, status, start, employer, base, None) for kind in kinds]


def _resident(person, rng, years_old) -> list[tuple]:
    plan = [(RESIDENT_MEDICAL_CARE, PAYING, _between(rng, max(person.birth, RESIDENT_MEDICAL), TODAY), None, None,
             None)]
    if years_old < 23 and rng.random() < 0.7:
        return plan  # students: medical insurance only
    status = PAYING if years_old >= 60 else rng.choices([PAYING, PAUSED], [92, 8])[0]
    start = _between(rng, max(birthday(person.birth, 16), RESIDENT_PENSION), TODAY)
    # 城乡居民养老保险 pays from 60 (or from joining, for those who joined older).
    retired = max(start, birthday(person.birth, 60)) if years_old >= 60 else None
    return [(RESIDENT_PENSION_SCHEME, status, start, None, None, retired)] + plan


def _earning(enrolments: list[dict]) -> set[str]:
    """Who pays into an employee scheme now (not retired): no 低保 or 特困 household has such a member."""
    return {e["id_number"] for e in enrolments if e["insurance_type"] in (EMPLOYEE_PENSION, EMPLOYEE_MEDICAL)
            and e["status"] == PAYING and e["retired"] != "1"}


def _benefits(households: list[Household], code: str, rng: random.Random,
              earning: set[str]) -> tuple[list[tuple], list[tuple]]:
    """民政: 社会救助 per household (低保, 特困 for some who live alone, 低保边缘, 临时救助) and
    the person-level benefits (高龄津贴 for all 80+, 残疾人补贴 for a few): (benefits, assistance)."""
    rows, assistance = [], []

    def grant(person, kind, amount, start, status="active"):
        status, end = _ended(rng, start, status)
        rows.append((person.id_number, kind, status, float(amount), start.isoformat(), end, code))

    for household in households:
        # Drawn all the same, so that the next household's draws stay where they were; then 低保 and
        # 特困 are left out where a member earns a wage (the checks across domains find that, planted).
        granted = _assistance(household, code, rng)
        relief = bool(granted) and granted[0][1] in ("1", "2")
        if not (relief and any(p.id_number in earning for p in household.members)):
            assistance += granted
        for person in household.members:
            years_old = age(person.birth, person.death or TODAY)
            if person.status == "moved_out":
                continue
            start = max(birthday(person.birth, 80), ELDERLY_ALLOWANCE)
            if years_old >= 80 and start <= (person.death or TODAY):
                amount = 100 if years_old < 90 else 200 if years_old < 95 else 300 if years_old < 100 else 500
                if person.death:  # the allowance stops with the death
                    rows.append((person.id_number, "elderly", "ended", float(amount), start.isoformat(),
                                 person.death.isoformat(), code))
                else:
                    grant(person, "elderly", amount, start)
            if person.status == "normal" and rng.random() < 0.015:
                start = _between(rng, max(person.birth, DISABILITY_SUBSIDY), TODAY)
                grant(person, "disability", rng.randrange(100, 310, 10), start,
                      rng.choices(["active", "suspended"], [95, 5])[0])
    return rows, assistance


def _assistance(household: Household, code: str, rng: random.Random) -> list[tuple]:
    """A household's 社会救助 records: one per type, with the household's amount and how many receive it."""
    living = [p for p in household.members if p.status == "normal"]
    if not living:
        return []
    draw = rng.random()
    if household.type == "family" and draw < 0.03:
        kind, per_member = "1", rng.randrange(600, 1210, 10)  # 低保: the gap to the local standard, per member
        status = rng.choices(["active", "suspended", "ended"], [90, 4, 6])[0]
    elif len(household.members) == 1 and age(living[0].birth) >= 60 and draw < 0.15:
        kind, per_member, status = "2", rng.randrange(1300, 1910, 10), "active"  # 特困: alone, no one to support them
    elif household.type == "family" and draw < 0.045:
        kind, per_member, status = "3", None, "active"  # 低保边缘: 专项救助 (medical, schooling), no monthly sum
    elif household.type == "family" and draw < 0.055:
        # 临时救助: a one-off sum after an emergency, ended the day it was paid.
        paid = _between(rng, TODAY - years(2), TODAY).isoformat()
        return [(household.number, "4", "ended", float(rng.randrange(500, 5010, 100)), len(living), paid, paid, code)]
    else:
        return []
    first = max(p.birth for p in living)
    start = _between(rng, max(first, TODAY - years(8)), TODAY)
    status, end = _ended(rng, start, status)
    amount = None if per_member is None else float(per_member * len(living))
    return [(household.number, kind, status, amount, len(living), start.isoformat(), end, code)]
