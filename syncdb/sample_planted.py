"""Deliberate cases in a sample community, for the checks across domains to find.

Each planted record is valid on its own (``syncdb validate`` finds nothing);
what is wrong shows only when two domains are read together:

- ``deceased_paid``: a person registered as deceased still draws a 民政 benefit;
- ``permit_expired``: a migrant still living here whose 居住证 has expired;
- ``rental_overfull``: a let house where more registered residents and migrants
  live than its 核定居住人数 allows.

``plant`` makes them while the sample is built; ``report`` finds them again
in the written databases, by the rules above, so the count it prints is what
the files hold, not what the generator meant to do.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import timedelta

from . import workdir
from .masks import mask
from .sample_people import TODAY, age, birthday

CLASSES = {
    "deceased_paid": "死亡人员仍在领取待遇",
    "permit_expired": "居住证已过期仍在本地居住",
    "rental_overfull": "出租屋居住人数超过核定人数",
}


def how_many(residents: int) -> int:
    """A few of each class: two, and one more for every 5,000 residents."""
    return 2 + residents // 5000


def plant(rng: random.Random, residents: int, persons: list, benefits: list[dict], migrants: list,
          lodgings: list) -> None:
    """Turn a few valid records into the cases above, in place."""
    n = how_many(residents)
    _deceased_paid(rng, n, persons, benefits)
    _permits_expired(rng, n, migrants)
    _overfull(rng, n, lodgings)


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


def report(directory) -> dict[str, list[str]]:
    """The planted cases found in a sample community's working databases, per class.

    A class whose databases are not all there is left out. Persons are named
    by masked ID number only.
    """
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


def _describe(name: str, row: tuple) -> str:
    if name == "deceased_paid":
        return f"{mask(row[0])}: died {row[2]}, {row[1]} still active"
    if name == "permit_expired":
        return f"{mask(row[0])}: permit expired {row[1]}, living in house {row[2]}"
    return f"house {row[0]}: {row[2]} living, capacity {row[1]}"

