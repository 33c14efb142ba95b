"""The floating population (流动人口) of a sample community, with residence permits (居住证).

Dongguan has more migrants than registered residents. They come from the
inland provinces (sample_origins.MIGRANT_PROVINCES), alone to the factory
dormitories and the village's let rooms, or as couples with their children;
their ID numbers carry their home county's code, as issued in their birth
year, and come from the community's own ``IdNumbers`` so they never collide
with a resident's.

A 居住证 can be had after six months here; it is endorsed (签注) every year
and runs three years, then is renewed. Everyone still here holds a valid one
or has not yet been here six months: an expired one is only ever planted
(sample_planted.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

from . import sample_origins as origins
from .sample_people import TODAY, Community, age, birthday, years_ago

MIGRANTS_PER_RESIDENT = 1.3  # one Dongguan town: 70,000 migrants against 53,000 registered
ELIGIBLE = timedelta(days=183)  # six months' residence before a 居住证
PERMIT_YEARS = 3


@dataclass(slots=True)
class Migrant:
    id_number: str
    name: str
    sex: str
    birth: date
    ethnicity: str
    native_division: str
    reason: str
    arrival: date
    leaving: date | None
    house: dict
    education: str | None
    phone: str | None
    permit: tuple | None = None  # (number, issued, endorsed, expires)


class Migrants:
    """Makes migrants group by group, lodging each group in one rented house of ``community.places``."""

    def __init__(self, community: Community, rng: random.Random):
        self.community, self.rng = community, rng
        self.people: list[Migrant] = []
        self.permits = 0

    def make(self, count: int) -> list[Migrant]:
        while len(self.people) < count:
            self._group(count - len(self.people))
        return self.people

    def _group(self, room: int) -> None:
        rng = self.rng
        family = rng.random() < 0.3
        kind = rng.choices(["village", "flat"], [70, 30])[0] if family else rng.choice(["dorm", "village"])
        province = origins.migrant_province(rng)
        county = self.community.regions.elsewhere(TODAY.year, rng, province)
        arrival = TODAY - timedelta(days=min(round(rng.expovariate(1 / 900)), 15 * 365))
        left = rng.random() < 0.07 and arrival <= TODAY - timedelta(days=60)
        leaving = self._between(arrival + timedelta(days=30), TODAY - timedelta(days=1)) if left else None
        plan = self._family_plan() if family else [(("1" if rng.random() < 0.58 else "2"),
                                                   round(rng.triangular(17, 56, 26)))]
        if leaving:  # no child is born after the family left
            plan = [(sex, max(years_old, (TODAY - leaving).days // 365 + 1)) for sex, years_old in plan]
        plan = plan[:room]
        house = self.community.places.lodge(0 if left else len(plan), kind)
        ethnicity = origins.ethnicity(rng, province)
        for i, (sex, years_old) in enumerate(plan):
            birth = self._between(years_ago(years_old + 1) + timedelta(days=1), years_ago(years_old))
            # Children share a parent's ethnicity; a spouse mostly does.
            if i == 1 and rng.random() < 0.2:
                ethnicity = origins.ethnicity(rng, province)
            self._person(sex, birth, county, ethnicity, max(arrival, birth), leaving, house, child=i >= 2)

    def _family_plan(self) -> list[tuple[str, int]]:
        rng = self.rng
        husband = rng.randint(22, 50)
        wife = max(20, husband - round(rng.gauss(2, 2)))
        plan = [("1", husband), ("2", wife)]
        for _ in range(rng.choices(range(3), [30, 45, 25])[0]):
            plan.append(("1" if rng.random() < 0.52 else "2", rng.randint(0, max(0, min(15, wife - 21)))))
        return plan

    def _person(self, sex, birth, county, ethnicity, arrival, leaving, house, child) -> None:
        rng, community = self.rng, self.community
        region = community.regions.for_birth(county, birth.year, rng)
        id_number, birth = community.ids.issue(region, birth, sex)
        arrival = max(arrival, birth)
        given = rng.choice(community.pools.male_names if sex == "1" else community.pools.female_names)
        years_old = age(birth)
        if child:
            reason = "3" if years_old >= 6 else "4"  # 就学, 投亲靠友
        else:
            reason = rng.choices(["1", "2", "4", "9"], [85, 8, 4, 3])[0]
        phone = None
        if years_old >= 16 and rng.random() < 0.95:
            phone = rng.choice(community.pools.phone_prefixes) + f"{rng.randrange(10**8):08d}"
        migrant = Migrant(id_number, rng.choice(community.pools.surnames) + given, sex, birth, ethnicity,
                          community.regions.current(region, TODAY.year, rng), reason, arrival, leaving, house,
                          origins.education(rng, birth, years_old, migrant=True), phone)
        migrant.permit = self._permit(arrival, leaving or TODAY)
        self.people.append(migrant)

    def _permit(self, arrival: date, until: date) -> tuple | None:
        """The 居住证 held on ``until``: issued after six months here, renewed every three years."""
        rng = self.rng
        issued = arrival + ELIGIBLE + timedelta(days=rng.randint(0, 120))
        if issued > until or rng.random() < 0.08:
            return None
        while birthday(issued, PERMIT_YEARS) <= until:
            issued = birthday(issued, PERMIT_YEARS)
        endorsed = None
        for n in (2, 1):  # the latest yearly 签注 before ``until``
            if birthday(issued, n) <= until:
                endorsed = birthday(issued, n)
                break
        self.permits += 1
        number = f"{self.community.code[:6]}{issued:%y}{self.permits:07d}"
        return number, issued, endorsed, birthday(issued, PERMIT_YEARS)

    def _between(self, first: date, last: date) -> date:
        return first + timedelta(days=self.rng.randint(0, max(0, (last - first).days)))


def row(migrant: Migrant, code: str) -> dict:
    number, issued, endorsed, expires = migrant.permit or (None, None, None, None)
    return {
        "id_number": migrant.id_number, "name": migrant.name, "sex": migrant.sex,
        "birth_date": migrant.birth.isoformat(), "ethnicity": migrant.ethnicity,
        "native_division": migrant.native_division, "address_code": migrant.house["address_code"],
        "house_code": migrant.house["house_code"], "reason": migrant.reason,
        "arrival_date": migrant.arrival.isoformat(),
        "leaving_date": migrant.leaving and migrant.leaving.isoformat(), "education": migrant.education,
        "permit_no": number, "permit_issued": issued and issued.isoformat(),
        "permit_endorsed": endorsed and endorsed.isoformat(), "permit_expires": expires and expires.isoformat(),
        "phone": migrant.phone, "community_code": code,
    }

