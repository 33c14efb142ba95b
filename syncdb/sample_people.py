"""Households and the persons registered in them, for a sample community.

``sample.py`` drives this and adds enrolments and benefits. Everything here
draws from one seeded ``random.Random`` and from pools that Faker filled once,
so the same inputs give the same people in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from faker import Faker

from . import sample_origins as origins
from .sample_ids import IdNumbers, Regions

# The generated data is "as of" this day, so that it never depends on the clock.
TODAY = date(2026, 6, 30)
# Birth dates keep this far inside the 18–45 year parent/child gap, so that the
# day or two an ID number may move a birth date (IdNumbers.issue) cannot cross it.
MARGIN = timedelta(days=30)

# Where a family household's 户口 came from: most are natives of the county, some
# settled from elsewhere in the province or from another one (人才引进, 积分入户).
HOME_WEIGHTS = {"here": 85, "province": 9, "elsewhere": 6}
# Ages of household heads (户主), by band and weight.
HEAD_AGES = [(22, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 79), (80, 90)]
HEAD_WEIGHTS = [7, 15, 18, 20, 18, 10, 3]
# GB/T 4761 codes of sons and daughters in birth order: 长子 次子 三子 …
SONS = ["22", "23", "24", "25", "26"]
DAUGHTERS = ["32", "33", "34", "35", "36"]
MARRIED = ["20", "21", "22", "23"]  # 已婚 初婚 再婚 复婚
MARRIED_WEIGHTS = [70, 20, 8, 2]


def years(n: float) -> timedelta:
    return timedelta(days=round(n * 365.2425))


def years_ago(n: int) -> date:
    return TODAY.replace(year=TODAY.year - n)  # 30 June exists in every year


def age(birth: date, on: date = TODAY) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def birthday(birth: date, n: int) -> date:
    """The n-th birthday; 29 February ones fall on 1 March in common years."""
    try:
        return birth.replace(year=birth.year + n)
    except ValueError:
        return date(birth.year + n, 3, 1)


@dataclass(slots=True)
class Person:
    id_number: str
    name: str
    sex: str
    ethnicity: str
    birth: date
    relationship: str
    marital: str = "10"
    status: str = "normal"
    phone: str | None = None
    surname: str = ""  # children take it; not a column of its own
    born_here: bool = True
    native_place: str | None = None  # 籍贯, a county code in use today
    education: str | None = None
    former_name: str | None = None
    workplace: str | None = None
    move_in: date | None = None
    death: date | None = None
    deregistration: tuple[str | None, str | None] = (None, None)  # 注销原因, 迁往地


@dataclass(slots=True)
class Household:
    number: str  # 户号
    type: str
    address: str
    members: list[Person] = field(default_factory=list)
    employer: str | None = None  # who runs a collective household's dormitory
    address_code: str | None = None

    @property
    def head(self) -> Person:
        return self.members[0]


@dataclass(frozen=True)
class Pools:
    """What Faker contributes, drawn once: the seeded Random then picks from these lists."""

    surnames: list[str]
    male_names: list[str]
    female_names: list[str]
    companies: list[str]
    phone_prefixes: list[str]

    @classmethod
    def from_faker(cls, seed: int) -> "Pools":
        fake = Faker("zh_CN")
        fake.seed_instance(seed)
        return cls(
            surnames=[fake.last_name() for _ in range(3000)],  # Faker weights them by frequency (王 李 张 …)
            male_names=[fake.first_name_male() for _ in range(1500)],
            female_names=[fake.first_name_female() for _ in range(1500)],
            companies=list(dict.fromkeys(fake.company() for _ in range(600))),
            phone_prefixes=[fake.phone_number()[:3] for _ in range(300)],
        )


class Community:
    """Builds the households of one community, one after the other, and gives each a home in ``places``."""

    def __init__(self, code: str, rng: random.Random, pools: Pools, regions: Regions, places):
        self.code, self.rng, self.pools, self.regions, self.places = code, rng, pools, regions, places
        self.county = code[:6]
        self.ids = IdNumbers(code)
        self.households = 0
        self.home = self.county  # the county the household being built comes from

    def household(self, room: int) -> Household:
        """The next household, with at most ``room`` members."""
        self.households += 1
        # 户号: the community's street and community digits, then a running number.
        number = f"{self.code[6:]}{self.households:05d}"
        if self.rng.random() < 0.025:
            household = self._collective(number)
        else:
            household = Household(number, "family", "")
            self.home = self._household_home()
            self._family(household)
        del household.members[room:]  # the head comes first and always stays
        for person in household.members:
            self._life_events(person)
        address = self.places.home(household, native=household.type == "family" and self.home == self.county)
        household.address_code, household.address = address["address_code"], self.places.text(address)
        return household

    def _household_home(self) -> str:
        where = self.rng.choices(list(HOME_WEIGHTS), list(HOME_WEIGHTS.values()))[0]
        if where == "here":
            return self.county
        province = self.county[:2] if where == "province" else origins.migrant_province(self.rng)
        if province == self.county[:2] and where != "province":
            province = "43"
        return self.regions.elsewhere(TODAY.year, self.rng, province)

    # -- people ---------------------------------------------------------------

    def _person(self, sex, birth, relationship, ethnicity, surname, home: str | None = None) -> Person:
        home = home or self.home
        region = self.regions.for_birth(home, birth.year, self.rng)
        id_number, birth = self.ids.issue(region, birth, sex)
        given = self.rng.choice(self.pools.male_names if sex == "1" else self.pools.female_names)
        person = Person(id_number, surname + given, sex, ethnicity, birth, relationship,
                        phone=self._phone(age(birth)), surname=surname, born_here=home == self.county)
        years_old = age(birth)
        person.native_place = self.regions.current(region, TODAY.year, self.rng)
        person.education = origins.education(self.rng, birth, years_old)
        if years_old >= 30 and self.rng.random() < 0.03:
            person.former_name = surname + self.rng.choice(
                self.pools.male_names if sex == "1" else self.pools.female_names)
        if 18 <= years_old < 60 and self.rng.random() < 0.6:
            person.workplace = self.rng.choice(self.pools.companies)
        if not person.born_here:
            # 迁入本址: on coming of age (work, marriage) or, for a child, with the parents.
            first = birthday(birth, 18) if years_old >= 22 else birth
            person.move_in = self._between(first, TODAY - timedelta(days=30))
        return person

    def _life_events(self, person: Person) -> None:
        """Death and moving out: the dates and 注销 fields that go with them; no phone for the dead."""
        rng = self.rng
        if person.status == "deceased":
            person.phone = None
            first = max(birthday(person.birth, 40), TODAY - years(12), person.move_in or person.birth)
            person.death = self._between(min(first, TODAY - timedelta(days=20)), TODAY - timedelta(days=10))
            person.deregistration = ("1", None)
        elif person.status == "moved_out":
            if rng.random() < 0.05:
                person.deregistration = ("3", rng.choice(["加拿大", "澳大利亚", "美国", "新加坡", "英国"]))
            else:
                province = self.county[:2] if rng.random() < 0.7 else origins.migrant_province(rng)
                county = self.regions.elsewhere(TODAY.year, rng, province)
                person.deregistration = ("2", self.regions.place(county) or self.regions.provinces[province])

    def _phone(self, years_old) -> str | None:
        if years_old < 18 or self.rng.random() > (0.9 if years_old < 75 else 0.6):
            return None
        return self.rng.choice(self.pools.phone_prefixes) + f"{self.rng.randrange(10**8):08d}"

    def _ethnicity(self, like: str | None = None, keep: float = 0.0, home: str | None = None) -> str:
        if like and self.rng.random() < keep:
            return like
        return origins.ethnicity(self.rng, (home or self.home)[:2])

    def _surname(self) -> str:
        return self.rng.choice(self.pools.surnames)

    def _between(self, first: date, last: date) -> date:
        return first + timedelta(days=self.rng.randint(0, max(0, (last - first).days)))

    def _born_aged(self, years_old: int) -> date:
        return self._between(years_ago(years_old + 1) + timedelta(days=1), years_ago(years_old))

    # -- households -----------------------------------------------------------

    def _collective(self, number) -> Household:
        """A 集体户: a company dormitory of workers who came from all over."""
        rng = self.rng
        company = rng.choice(self.pools.companies)
        household = Household(number, "collective", "", employer=company)
        for i in range(rng.randint(3, 12)):
            sex = "1" if rng.random() < 0.6 else "2"
            years_old = round(rng.triangular(18, 50, 24))
            province = self.county[:2] if rng.random() < 0.35 else origins.migrant_province(rng)
            home = self.regions.elsewhere(TODAY.year, rng, province)
            person = self._person(sex, self._born_aged(years_old), "99" if i else "02",
                                  self._ethnicity(home=home), self._surname(), home)
            person.workplace = company
            if years_old >= 27 and rng.random() < 0.6:
                person.marital = rng.choices(MARRIED, MARRIED_WEIGHTS)[0]
            household.members.append(person)
        return household

    def _family(self, household: Household) -> None:
        rng = self.rng
        members = household.members
        head_sex = "1" if rng.random() < 0.7 else "2"
        head_age = rng.randint(*rng.choices(HEAD_AGES, HEAD_WEIGHTS)[0])
        head = self._person(head_sex, self._born_aged(head_age), "02", self._ethnicity(),
                            self._surname())
        members.append(head)
        spouse = None
        if rng.random() < _married_share(head_age):
            head.marital = rng.choices(MARRIED, MARRIED_WEIGHTS)[0]
            if rng.random() < 0.92:  # the others live and work elsewhere
                spouse = self._spouse(head, "10" if rng.random() < 0.55 else None)
                members.append(spouse)
        elif head_age >= 30 or rng.random() < 0.1:
            widowed = min(0.9, max(0.1, (head_age - 40) / 40))
            head.marital = "30" if rng.random() < widowed else rng.choice(["40", "40", "10"])
        # Children take the father's surname; 'line' is the family's.
        father = head if head_sex == "1" else spouse
        line = father.surname if father else (self._surname() if rng.random() < 0.7 else head.surname)
        if head_age <= 60 and rng.random() < 0.14:
            self._parents_of(head, members)
        parents = [head] + ([spouse] if spouse else [])
        grandchildren = False
        if head.marital != "10":
            grandchildren = self._children(parents, line, members)
        if not grandchildren and 50 <= head_age <= 78 and rng.random() < 0.07:
            # 留守儿童: grandchildren whose parents work away live with the grandparents.
            oldest_grandchild = max(p.birth for p in parents) + years(38) + MARGIN
            if oldest_grandchild <= TODAY:
                for _ in range(rng.randint(1, 2)):
                    birth = self._between(max(oldest_grandchild, years_ago(16)), TODAY)
                    sex = "1" if rng.random() < 0.52 else "2"
                    members.append(self._person(sex, birth, "41" if sex == "1" else "42",
                                                head.ethnicity, line))

    def _spouse(self, of: Person, relationship: str | None) -> Person:
        """A spouse of the opposite sex and within ten years of age; husbands are older, mostly."""
        rng = self.rng
        sex = "2" if of.sex == "1" else "1"
        gap = years(max(-9.5, min(9.5, rng.gauss(2.5, 3))))
        birth = of.birth + gap if sex == "2" else of.birth - gap
        latest = years_ago(20 if sex == "2" else 22)  # the legal ages of marriage
        if birth > latest:
            birth = latest - timedelta(days=rng.randint(0, 300))
        relationship = relationship or ("12" if sex == "2" else "11")  # 妻, 夫
        # Most married within the county; the others came from elsewhere in the province.
        home = self.home if rng.random() < 0.8 else self.regions.elsewhere(TODAY.year, rng, self.home[:2])
        spouse = self._person(sex, birth, relationship, self._ethnicity(of.ethnicity, 0.85),
                              self._surname(), home)
        spouse.marital = rng.choices(MARRIED, MARRIED_WEIGHTS)[0]
        return spouse

    def _parents_of(self, head: Person, members: list[Person]) -> None:
        """The head's father (51) and/or mother (52), 18–45 years older and at most 101."""
        rng = self.rng
        oldest, youngest = head.birth - years(45) + MARGIN, head.birth - years(18) - MARGIN
        oldest = max(oldest, years_ago(101) + timedelta(days=1))
        if oldest > youngest:
            return
        father_birth = head.birth - years(rng.uniform(24, 38))
        mother_birth = father_birth + years(max(-8, min(8, rng.gauss(2.5, 2.5))))
        added = []
        for sex, birth, share in (("1", father_birth, 0.65), ("2", mother_birth, 0.85)):
            if rng.random() < share:
                birth = min(max(birth, oldest), youngest)
                surname = head.surname if sex == "1" else self._surname()
                person = self._person(sex, birth, "51" if sex == "1" else "52",
                                      self._ethnicity(head.ethnicity, 0.9), surname)
                person.status = "deceased" if rng.random() < 0.1 else "normal"
                added.append(person)
        if len(added) == 2:
            father, mother = added
            father.marital = "30" if mother.status == "deceased" else "20"
            mother.marital = "30" if father.status == "deceased" else "20"
        elif added:  # the other parent died, divorced or lives elsewhere
            added[0].marital = rng.choices(["30", "40", "20"], [75, 10, 15])[0]
        members.extend(added)

    def _children(self, parents: list[Person], line: str, members: list[Person]) -> bool:
        """Sons and daughters of the head (and spouse) who live at home; True if grandchildren came too."""
        rng = self.rng
        wanted = rng.choices(range(5), _children_weights(parents[0].birth.year))[0]
        births = sorted(b for b in (self._child_birth(parents) for _ in range(wanted)) if b)
        generic = rng.random() < 0.35  # many registrars write plain 子/女
        sons = daughters = 0
        grandchildren = False
        ethnicities = [p.ethnicity for p in parents]
        for birth in births:
            sex = "1" if rng.random() < 0.515 else "2"
            if sex == "1":
                sons += 1
                code = "20" if generic else "21" if len(births) == 1 else SONS[min(sons, 5) - 1]
            else:
                daughters += 1
                code = "30" if generic else "31" if len(births) == 1 else DAUGHTERS[min(daughters, 5) - 1]
            years_old = age(birth)
            if rng.random() > _at_home(years_old):
                continue
            child = self._person(sex, birth, code, rng.choice(ethnicities), line)
            members.append(child)
            if years_old >= 24 and rng.random() < (0.5 if sex == "1" else 0.15):
                child.marital = rng.choices(MARRIED, MARRIED_WEIGHTS)[0]
                # 儿媳 for a son's wife, 女婿 for a daughter's husband.
                in_law = self._spouse(child, "38" if sex == "1" else "28")
                members.append(in_law)
                grandchildren = True
                surname = line if sex == "1" else in_law.surname
                for _ in range(rng.choices(range(3), [25, 55, 20])[0]):
                    grandchild_birth = self._child_birth([child, in_law])
                    if grandchild_birth:
                        g_sex = "1" if rng.random() < 0.52 else "2"
                        codes = ("41", "42") if sex == "1" else ("43", "44")
                        members.append(self._person(g_sex, grandchild_birth, codes[g_sex == "2"],
                                                    child.ethnicity, surname))
            else:
                if years_old >= 28 and rng.random() < 0.1:
                    child.marital = "40"
                if years_old >= 18 and rng.random() < 0.1:
                    child.status = "moved_out"  # studying or working elsewhere, 户口 moved with them
        return grandchildren

    def _child_birth(self, parents: list[Person]) -> date | None:
        """A birth date 18–45 years after every parent's, mostly when the younger was 21–35; None if unborn."""
        latest_parent = max(p.birth for p in parents)
        first = latest_parent + years(18) + MARGIN
        last = min(min(p.birth for p in parents) + years(45) - MARGIN, TODAY)
        wanted = latest_parent + years(self.rng.uniform(21, 35))
        if wanted > TODAY or first > last:
            return None
        return wanted if first <= wanted <= last else self._between(first, last)


def _married_share(years_old: int) -> float:
    if years_old < 25:
        return 0.35
    if years_old < 30:
        return 0.6
    return 0.85 if years_old < 65 else 0.72 if years_old < 75 else 0.5


def _children_weights(birth_year: int) -> list[float]:
    """How many children (0–4) by the parent's birth cohort: fewer since the 1980 policy."""
    if birth_year < 1950:
        return [5, 15, 30, 30, 20]
    if birth_year < 1966:
        return [5, 35, 40, 20, 0]
    if birth_year < 1986:
        return [8, 55, 32, 5, 0]
    return [20, 45, 30, 5, 0]


def _at_home(years_old: int) -> float:
    """The share of children of this age still registered in their parents' household."""
    return 0.97 if years_old < 18 else 0.8 if years_old < 25 else 0.4 if years_old < 35 else 0.15
