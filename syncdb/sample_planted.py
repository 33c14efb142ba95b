"""Deliberate cases in a sample community, for the checks across domains to find.

Each planted record is valid on its own (``syncdb validate`` finds nothing);
what is wrong shows only when two domains are read together:

- ``deceased_paid``: a person registered as deceased still draws a 民政 benefit;
- ``permit_expired``: a migrant still living here whose 居住证 has expired;
- ``rental_overfull``: a let house where more registered residents and migrants
  live than its 核定居住人数 allows;
- ``benefit_unregistered``: a migrant who has left still draws a 残疾人补贴, with
  no 户籍 here and no valid 居住证;
- ``dibao_employed``: a member of a 低保 household is paid into employee
  insurance on a base above three times the 低保 standard;
- ``probable_duplicate``: a resident (or a migrant) entered again as a migrant
  under another ID number: the same name, phone and birth date, or the same
  name and phone with one digit of the birth date mistyped in the ID number;
- ``household_head``: a household record names as 户主 a member who is not
  coded 户主 (02);
- ``elderly_allowance``: 高龄津贴 granted to someone under 80, or one 80 or over
  never granted it.

The sample never makes the checks ``birth_sex_mismatch`` would find: every
record's birth date and sex agree with its ID number (the schemas' ``matches``).
Random names and dates can make two people look like one by chance; ``report``
lists the planted cases and ``chance`` those (a planted duplicate shares its
phone with its original: that is how the two are told apart).

``plant`` makes them while the sample is built; ``report`` finds them again
in the written databases, by the rules above, so the count it prints is what
the files hold, not what the generator meant to do.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import date, timedelta

from stdnum.cn.ric import calc_check_digit

from . import workdir
from .i18n import N_
from .masks import mask
from .sample_people import TODAY, age, birthday

# What each class is called where it is shown (`syncdb sample --report`), through the catalogue.
CLASSES = {
    "deceased_paid": N_("Deceased, still drawing a benefit"),
    "permit_expired": N_("Residence permit expired, still living here"),
    "rental_overfull": N_("Rented house with more residents than its approved capacity"),
    "benefit_unregistered": N_("Paid with no registration at this street and no valid residence permit"),
    "dibao_employed": N_("Subsistence household with a member insured on a high contribution base"),
    "probable_duplicate": N_("Probably one person under two ID numbers"),
    "household_head": N_("Household head registered inconsistently"),
    "elderly_allowance": N_("Allowance for the elderly and age disagree"),
}
# The checks' defaults (plugins/checks_benefits.py), which the report counts by.
DIBAO_THRESHOLD = 1430 * 3  # dibao_employed: local_standard × times
ELDERLY_AGE = 80  # elderly_allowance: age


def how_many(residents: int) -> int:
    """A few of each class: two, and one more for every 5,000 residents."""
    return 2 + residents // 5000


def plant(rng: random.Random, residents: int, persons: list, benefits: list[dict], migrants: list,
          lodgings: list, households: list = (), household_rows: list[dict] = (), enrolments: list[dict] = (),
          assistance: list[dict] = (), companies: list[str] = ()) -> None:
    """Turn a few valid records into the cases above, in place."""
    n = how_many(residents)
    _deceased_paid(rng, n, persons, benefits)
    _permits_expired(rng, n, migrants)
    _overfull(rng, n, lodgings)
    code = household_rows[0]["community_code"] if household_rows else None
    _unregistered_paid(rng, n, migrants, benefits, code)
    _dibao_employed(rng, n, households, assistance, enrolments, companies)
    _duplicates(rng, n, persons, migrants)
    _heads(rng, n, households, household_rows)
    _elderly(rng, n, persons, benefits, code)


def _deceased_paid(rng, n, persons, benefits) -> None:
    deceased = [p for p in persons if p.death]
    drawn = {(b["id_number"], b["benefit_type"]): b for b in benefits}
    for person in rng.sample(deceased, min(n, len(deceased))):
        kind = "elderly" if age(person.birth, person.death) >= 80 else "disability"
        benefit = drawn.get((person.id_number, kind))
        if benefit is None:
            first = birthday(person.birth, 80) if kind == "elderly" else person.birth
            start = max(person.death - timedelta(days=rng.randint(200, 2000)), first)
            amount = 100.0 if kind == "elderly" else float(rng.randrange(100, 310, 10))
            benefit = {"id_number": person.id_number, "benefit_type": kind, "monthly_amount": amount,
                       "start_date": start.isoformat(), "community_code": benefits[0]["community_code"]
                       if benefits else None}
            benefits.append(benefit)
        # Nobody told the civil affairs office: still paid, month after month.
        benefit.update(status="active", end_date=None)


def _permits_expired(rng, n, migrants) -> None:
    # Someone here long enough to have let a three-year permit lapse.
    living = [m for m in migrants if m.permit and m.leaving is None
              and m.arrival <= TODAY - timedelta(days=4 * 365 + 200)]
    for migrant in rng.sample(living, min(n, len(living))):
        number = migrant.permit[0]
        issued = TODAY - timedelta(days=3 * 365 + rng.randint(15, 200))
        migrant.permit = (number, issued, birthday(issued, 2), birthday(issued, 3))


def _overfull(rng, n, lodgings) -> None:
    crowded = [lodging for lodging in lodgings if lodging.house["capacity"] and lodging.living >= 4]
    for lodging in rng.sample(crowded, min(n, len(crowded))):
        lodging.house["capacity"] = lodging.living - rng.randint(1, 2)


def _unregistered_paid(rng, n, migrants, benefits, code) -> None:
    # Someone who left the street, still paid: nobody told the civil affairs office.
    left = [m for m in migrants if m.leaving is not None and age(m.birth) >= 18]
    for migrant in rng.sample(left, min(n, len(left))):
        start = migrant.arrival + (migrant.leaving - migrant.arrival) // 2  # granted while they lived here
        benefits.append({"id_number": migrant.id_number, "benefit_type": "disability", "status": "active",
                         "monthly_amount": float(rng.randrange(100, 310, 10)),
                         "start_date": start.isoformat(), "end_date": None, "community_code": code})


def _dibao_employed(rng, n, households, assistance, enrolments, companies) -> None:
    on_dibao = {a["household_no"] for a in assistance if a["assistance_type"] == "1" and a["status"] == "active"}
    adults = {h.number: [p for p in h.members if p.status == "normal" and 20 <= age(p.birth) <= 50]
              for h in households if h.number in on_dibao}
    chosen = sorted(number for number, people in adults.items() if people)
    taken = {(e["id_number"], e["insurance_type"]): e for e in enrolments}
    for number in rng.sample(chosen, min(n, len(chosen))):
        person = rng.choice(adults[number])
        # A job the household never declared: wages well above what 低保 allows.
        employer = rng.choice(companies) if companies else None
        person.workplace = employer
        start = max(birthday(person.birth, 18), TODAY - timedelta(days=rng.randint(200, 1500)))
        base = float(rng.randrange(6000, 15001, 100))
        for kind in ("110", "310"):
            row = {"id_number": person.id_number, "insurance_type": kind, "status": "1", "retired": "0",
                   "retired_date": None, "start_date": start.isoformat(), "end_date": None, "employer": employer,
                   "monthly_base": base, "community_code": assistance[0]["community_code"]}
            if (person.id_number, kind) in taken:
                taken[person.id_number, kind].update(row)
            else:
                enrolments.append(row)


def _duplicates(rng, n, persons, migrants) -> None:
    ids = {p.id_number for p in persons} | {m.id_number for m in migrants}
    living = [m for m in migrants if m.leaving is None and m.permit and age(m.birth) >= 18]
    rng.shuffle(living)
    copies, kept = living[:len(living) // 2], living[len(living) // 2:]  # a migrant never copies a copy
    residents = [p for p in persons if p.status == "normal" and p.phone and 20 <= age(p.birth) <= 50]
    planted = 0
    for copy in copies:
        if planted == n:
            return
        if planted % 2 == 0:  # a resident recorded again as a migrant: same name and birth date
            original = rng.choice(residents)
            number = _free_number(copy.id_number[:6], original.birth, original.sex, ids)
        else:  # a migrant entered twice, one digit of the birth date mistyped in the ID number
            original = rng.choice(kept)
            number = _mistyped(original.id_number, ids)
            copy.native_division = original.native_division
        if number is None or not original.phone or copy.arrival < birthday(_born(number), 16):
            continue
        ids.add(number)
        copy.id_number, copy.name, copy.sex, copy.birth = number, original.name, original.sex, _born(number)
        copy.ethnicity, copy.phone = original.ethnicity, original.phone
        planted += 1


def _born(number: str) -> date:
    return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))


def _mistyped(number: str, taken: set[str]) -> str | None:
    """The ID number with one digit of its birth date changed (a real date), check character recomputed."""
    born = _born(number)
    for days in (1, -1, 2, -2, 3, -3, 10, -10):
        other = born + timedelta(days=days)
        if sum(a != b for a, b in zip(f"{born:%Y%m%d}", f"{other:%Y%m%d}")) == 1:
            body = f"{number[:6]}{other:%Y%m%d}{number[14:17]}"
            mistyped = body + calc_check_digit(body + "0")
            if mistyped not in taken:
                return mistyped
    return None


def _free_number(region: str, birth: date, sex: str, taken: set[str]) -> str | None:
    """An ID number of this region, birth date and sex that nobody holds (the 17th digit says the sex)."""
    for order in range(900 + (sex == "1"), 2, -2):
        body = f"{region}{birth:%Y%m%d}{order:03d}"
        number = body + calc_check_digit(body + "0")
        if number not in taken:
            return number
    return None


def _heads(rng, n, households, household_rows) -> None:
    rows = {r["household_no"]: r for r in household_rows}
    shared = [h for h in households if h.type == "family" and h.head.status == "normal"
              and sum(p.status == "normal" for p in h.members) >= 2]
    for household in rng.sample(shared, min(n, len(shared))):
        # The household record kept a former head's number: the member coded 户主 is someone else.
        other = rng.choice([p for p in household.members[1:] if p.status == "normal"])
        rows[household.number]["head_id_number"] = other.id_number


def _elderly(rng, n, persons, benefits, code) -> None:
    allowances = {b["id_number"]: b for b in benefits if b["benefit_type"] == "elderly"}
    taken = {(b["id_number"], b["benefit_type"]) for b in benefits}
    young = [p for p in persons if p.status == "normal" and 65 <= age(p.birth) < ELDERLY_AGE
             and (p.id_number, "elderly") not in taken]
    old = [p for p in persons if p.status == "normal" and age(p.birth) >= ELDERLY_AGE
           and allowances.get(p.id_number, {}).get("status") == "active"]
    for person in rng.sample(young, min((n + 1) // 2, len(young))):
        # Granted a year or two early, the birth date misread.
        benefits.append({"id_number": person.id_number, "benefit_type": "elderly", "status": "active",
                         "monthly_amount": 100.0, "start_date": (TODAY - timedelta(days=rng.randint(30, 700))).isoformat(),
                         "end_date": None, "community_code": code})
    for person in rng.sample(old, min(n // 2, len(old))):
        benefits.remove(allowances[person.id_number])  # never applied for


# -- finding them again ----------------------------------------------------------

_QUERIES = {
    "deceased_paid": (("huji", "minzheng"), """
        SELECT p.id_number, b.benefit_type, p.death_date FROM huji.persons p
        JOIN minzheng.benefits b ON b.id_number = p.id_number
        WHERE p.status = 'deceased'
          AND (b.status != 'ended' OR b.end_date IS NULL OR b.end_date > p.death_date)
        ORDER BY p.id_number, b.benefit_type"""),
    "permit_expired": (("liudong",), """
        SELECT id_number, permit_expires, house_code FROM liudong.migrants
        WHERE leaving_date IS NULL AND permit_expires < :today ORDER BY id_number"""),
    "rental_overfull": (("fangwu", "huji", "liudong"), """
        SELECT h.house_code, h.capacity,
               (SELECT count(*) FROM huji.persons p WHERE p.address_code = h.address_code
                  AND p.status = 'normal' AND h.house_code = h.address_code)
             + (SELECT count(*) FROM liudong.migrants m WHERE m.house_code = h.house_code
                  AND m.leaving_date IS NULL) AS living
        FROM fangwu.houses h WHERE h.rented = '1' AND h.capacity IS NOT NULL
          AND living > h.capacity ORDER BY h.house_code"""),
}


def report(*directories) -> dict[str, list[str]]:
    """The planted cases found in sample communities' working databases, per class.

    Give every community of a street to see the duplicates across them. A
    class whose databases are not all there is left out. Persons are named by
    masked ID number only, households by 户号, houses by 房屋编码.
    """
    return _found(directories)[0]


def chance(*directories) -> dict[str, list[str]]:
    """The cases the sample's random names and dates make by chance (two people alike), per class."""
    return _found(directories)[1]


def _found(directories) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    planted: dict[str, list[str]] = {}
    for directory in directories:
        for name, lines in _by_sql(directory).items():
            planted.setdefault(name, []).extend(lines)
    rows = _rows(directories)
    lucky: dict[str, list[str]] = {}
    for name, (needs, rule) in _RULES.items():
        if all(rows[t] is not None for t in needs):
            found = rule(rows)
            planted[name] = [line for line, by_plan in found if by_plan]
            lucky[name] = [line for line, by_plan in found if not by_plan]
    return planted, lucky


def _by_sql(directory) -> dict[str, list[str]]:
    found = {}
    conn = sqlite3.connect("file::memory:", uri=True)  # uri: so that ATTACH takes read-only file: URIs
    try:
        attached = set()
        for domain in ("huji", "minzheng", "liudong", "fangwu"):
            path = workdir.db_path(directory, domain)
            if path.exists():
                conn.execute("ATTACH DATABASE ? AS " + domain, (f"file:{path}?mode=ro",))
                attached.add(domain)
        for name, (needs, sql) in _QUERIES.items():
            if set(needs) <= attached:
                rows = conn.execute(sql, {"today": TODAY.isoformat()}).fetchall()
                found[name] = [_describe(name, row) for row in rows]
    finally:
        conn.close()
    return found


_TABLES = {"persons": "huji", "households": "huji", "migrants": "liudong", "benefits": "minzheng",
           "assistance": "minzheng", "enrolments": "shebao"}


def _rows(directories) -> dict[str, list[dict] | None]:
    """Every row of the tables the rules below read, from all the communities (None: a table not there)."""
    out: dict[str, list[dict] | None] = {t: [] for t in _TABLES}
    for directory in directories:
        for table, domain in _TABLES.items():
            path = workdir.db_path(directory, domain)
            if out[table] is None or not path.exists():
                out[table] = None
                continue
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                conn.row_factory = sqlite3.Row
                out[table] += [dict(r) for r in conn.execute(f"SELECT * FROM [{table}]")]
            except sqlite3.OperationalError:  # a domain of an older schema without this table
                out[table] = None
            finally:
                conn.close()
    return out


def _years(id_number: str) -> int:
    return age(_born(id_number), TODAY)


def _unregistered(rows) -> list[tuple[str, bool]]:
    paid = {b["id_number"] for b in rows["benefits"] if b["status"] == "active"}
    paid |= {e["id_number"] for e in rows["enrolments"] if e["insurance_type"] in ("110", "120", "170")
             and e["retired"] == "1" and e["status"] == "1"}
    registered = {p["id_number"] for p in rows["persons"]}
    today = TODAY.isoformat()
    permitted = {m["id_number"] for m in rows["migrants"] if m["leaving_date"] is None and m["permit_issued"]
                 and m["permit_expires"] and m["permit_issued"] <= today <= m["permit_expires"]}
    return [(f"{mask(i)}: paid, with no 户籍 here and no valid residence permit", True)
            for i in sorted(paid - registered - permitted)]


def _employed(rows) -> list[tuple[str, bool]]:
    relief = {a["household_no"] for a in rows["assistance"] if a["assistance_type"] in ("1", "2")
              and a["status"] == "active"}
    members = {p["id_number"]: p["household_no"] for p in rows["persons"]
               if p["status"] == "normal" and p["household_no"] in relief}
    bases: dict[str, float] = {}
    for e in rows["enrolments"]:
        if (e["id_number"] in members and e["insurance_type"] in ("110", "120", "310") and e["status"] == "1"
                and e["retired"] != "1" and e["monthly_base"] is not None and e["monthly_base"] > DIBAO_THRESHOLD):
            number = members[e["id_number"]]
            bases[number] = max(bases.get(number, 0), e["monthly_base"])
    return [(f"{number}: on 低保/特困, a member paid into employee insurance on {base:.0f} a month", True)
            for number, base in sorted(bases.items())]


def _elderly_rule(rows) -> list[tuple[str, bool]]:
    allowance = [b for b in rows["benefits"] if b["benefit_type"] == "elderly"]
    under = {b["id_number"] for b in allowance if b["status"] == "active" and _years(b["id_number"]) < ELDERLY_AGE}
    granted = {b["id_number"] for b in allowance if b["status"] in ("active", "suspended")}
    over = {p["id_number"] for p in rows["persons"] if p["status"] == "normal"
            and _years(p["id_number"]) >= ELDERLY_AGE and p["id_number"] not in granted}
    return sorted([(f"{mask(i)}: 高龄津贴 at {_years(i)}", True) for i in under]
                  + [(f"{mask(i)}: {_years(i)} years old, no 高龄津贴", True) for i in over])


def _head_rule(rows) -> list[tuple[str, bool]]:
    members: dict[str, list[dict]] = {}
    for p in rows["persons"]:
        if p["status"] == "normal" and p["household_no"]:
            members.setdefault(p["household_no"], []).append(p)
    found = []
    for h in rows["households"]:
        living = members.get(h["household_no"], [])
        heads = [p["id_number"] for p in living if p["relationship"] == "02"]
        if living and (len(heads) != 1 or heads[0] != h["head_id_number"]):
            found.append((f"{h['household_no']}: {len(heads)} coded 户主, the record names another", True))
    return sorted(found)


def _twins(rows) -> list[tuple[str, bool]]:
    """Pairs of ID numbers alike by name and birth date, or by name and a body one digit apart;
    each under its smaller ID number. Planted when the two share a phone number."""
    people: dict[str, dict] = {}
    for p in rows["persons"] + rows["migrants"]:
        people.setdefault(p["id_number"], p)
    groups: dict[tuple, set[str]] = {}
    for i, p in people.items():
        groups.setdefault((p["name"], p["birth_date"]), set()).add(i)
        for k in range(17):
            groups.setdefault((p["name"], k, i[:k] + i[k + 1:17]), set()).add(i)
    pairs: dict[str, bool] = {}
    for ids in groups.values():
        for a in ids:
            for b in ids:
                if a < b:
                    shared = people[a]["phone"] is not None and people[a]["phone"] == people[b]["phone"]
                    pairs[a] = pairs.get(a, False) or shared
    return [(f"{mask(i)}: alike another ID number", by_plan) for i, by_plan in sorted(pairs.items())]


_RULES = {
    "benefit_unregistered": (("benefits", "enrolments", "persons", "migrants"), _unregistered),
    "dibao_employed": (("assistance", "persons", "enrolments"), _employed),
    "probable_duplicate": (("persons", "migrants"), _twins),
    "household_head": (("households", "persons"), _head_rule),
    "elderly_allowance": (("persons", "benefits"), _elderly_rule),
}


def _describe(name: str, row: tuple) -> str:
    if name == "deceased_paid":
        return f"{mask(row[0])}: died {row[2]}, {row[1]} still active"
    if name == "permit_expired":
        return f"{mask(row[0])}: permit expired {row[1]}, living in house {row[2]}"
    return f"house {row[0]}: {row[2]} living, capacity {row[1]}"
