"""Region codes and ID numbers (公民身份号码) for sample communities.

Region codes and the years each was in use come from python-stdnum's table,
so generated numbers validate the way syncdb's validator checks them.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from stdnum import numdb
from stdnum.cn import uscc
from stdnum.cn.ric import calc_check_digit

# Provinces made of part of another: 重庆 left 四川 in 1997, 海南 left 广东 in 1988.
# People born there before carry the older province's codes.
PART_OF = {"50": ("51", 1997), "46": ("44", 1988)}
# Names that are not a place, only a grouping of codes in the region table.
NOT_PLACES = ("市辖区", "县", "省直辖县级行政单位", "省直辖县级行政区划")


class Regions:
    """County codes (行政区划代码, the first six digits of an ID number) as python-stdnum knows them.

    A code is in use for some years only: an ID number whose code stdnum knows
    for the birth year validates without a warning, so we pick such codes.
    """

    def __init__(self):
        self.spans: dict[str, list[tuple[int | None, int | None, str]]] = {}
        self.provinces: dict[str, str] = {}
        for _, province, _, props, counties in numdb.get("cn/loc").prefixes:
            self.provinces[province] = props.get("province", "")
            for _, county, _, cprops, _ in counties:
                self.spans[province + county] = _spans(cprops.get("county", ""))
        # HK, Macao and Taiwan residents carry other documents, not this ID number.
        self.counties = [
            c for c, spans in self.spans.items()
            if not c.endswith("00") and c[:2] not in ("71", "81", "82")
            and not any(name in NOT_PLACES for _, _, name in spans)
        ]
        self.by_province: dict[str, list[str]] = {}
        for c in self.counties:
            self.by_province.setdefault(c[:2], []).append(c)
        self._earlier: dict[tuple[str, int], str | None] = {}

    def valid(self, code: str, year: int) -> bool:
        return any((start is None or start <= year) and (end is None or year <= end)
                   for start, end, _ in self.spans.get(code, ()))

    def name(self, code: str) -> str | None:
        """The current name of a code, or None for a grouping or an unknown code."""
        spans = self.spans.get(code)
        if not spans:
            return None
        name = next((n for _, end, n in spans if end is None), spans[-1][2])
        return None if name in NOT_PLACES else name

    def place(self, county: str) -> str | None:
        """'广东省东莞市', '广东省深圳市南山区' …: the start of an address in this county."""
        parts = [self.provinces.get(county[:2]), self.name(county[:4] + "00"), self.name(county)]
        if not parts[2]:
            return None
        return "".join(dict.fromkeys(p for p in parts if p))

    def for_birth(self, home: str, year: int, rng: random.Random) -> str:
        """The home county's code as it was in the birth year, when stdnum knows one."""
        if home not in self.spans or self.valid(home, year):
            return home  # a code stdnum has never heard of is still the real one; a warning
        return self._renamed(home, year) or self.elsewhere(year, rng, home[:2])

    def _renamed(self, home: str, year: int) -> str | None:
        if (home, year) not in self._earlier:
            self._earlier[home, year] = self._find_renamed(home, year)
        return self._earlier[home, year]

    def _find_renamed(self, home: str, year: int) -> str | None:
        # 东莞市 (441900, since 1988) was 东莞市 442502 and before 1985 东莞县 442527.
        stems = {_stem(name) for _, _, name in self.spans[home]}
        for code in self.by_province.get(home[:2], ()):
            for start, end, name in self.spans[code]:
                if (start is None or start <= year) and (end is None or year <= end) and _stem(name) in stems:
                    return code
        return None

    def current(self, code: str, year: int, rng: random.Random) -> str:
        """A county code in use in ``year`` for the place ``code`` names: itself, its renamed self, or a neighbour.

        A migrant's 户籍地 (native_division) is where the 户口 is today, while
        the ID number keeps the code of the birth year.
        """
        if self.valid(code, year):
            return code
        if code in self.spans:
            renamed = self._renamed(code, year)
            if renamed:
                return renamed
        return self.elsewhere(year, rng, code[:2])

    def elsewhere(self, year: int, rng: random.Random, province: str | None = None) -> str:
        pool = self.by_province.get(province) or self.counties
        for _ in range(30):
            code = rng.choice(pool)
            if self.valid(code, year):
                return code
        if province in PART_OF and year < PART_OF[province][1]:
            return self.elsewhere(year, rng, PART_OF[province][0])
        return code


def _spans(text: str) -> list[tuple[int | None, int | None, str]]:
    """'[1983-1989]南头区办事处,[1990-]南山区' → [(1983, 1989, '南头区办事处'), (1990, None, '南山区')]."""
    spans = []
    for part in text.split(","):
        if part.startswith("["):
            years_, name = part[1:].split("]", 1)
            start, end = years_.split("-")
            spans.append((int(start) if start else None, int(end) if end else None, name))
        elif part:
            spans.append((None, None, part))
    return spans


def _stem(name: str) -> str:
    return name[:-1] if len(name) > 2 and name[-1] in "市县区" else name


class IdNumbers:
    """Issues 18-character 公民身份号码 that no other sample community issues.

    The 3-digit order code (顺序码) is ``2 × (k × 248 + slot) + 2 + sex``,
    between 002 and 995: odd for men and even for women as GB 11643 wants,
    never 000, and clear of 996–999, which are kept for centenarians. ``slot``
    comes from the community code and ``k`` (0 or 1) counts the people of one
    region, birth date and sex here. Communities of one street office (the same
    first 9 digits) numbered 001–248 get different slots, so their numbers
    cannot collide; any other pair collides only if their slots happen to
    match (1 in 248). A third person of the same region, birth date and sex is
    born a day earlier instead.
    """

    SLOTS = 248

    def __init__(self, code: str):
        self.slot = (int(code[9:12]) + 83 * int(code[:9])) % self.SLOTS
        self.taken: dict[tuple[str, date, str], int] = {}
        self.earlier: dict[tuple[str, date, str], date] = {}

    def issue(self, region: str, birth: date, sex: str) -> tuple[str, date]:
        # Remember where the free day was, so a crowded date is walked once, not every time.
        path = []
        while (k := self.taken.get((region, birth, sex), 0)) >= 2:
            path.append(birth)
            birth = self.earlier.get((region, birth, sex), birth - timedelta(days=1))
        for full in path:
            self.earlier[region, full, sex] = birth
        self.taken[region, birth, sex] = k + 1
        order = 2 * (k * self.SLOTS + self.slot) + 2 + (sex == "1")
        body = f"{region}{birth:%Y%m%d}{order:03d}"
        # calc_check_digit ignores the last character: it expects the full number.
        return body + calc_check_digit(body + "0"), birth


# GB 32100-2015 登记管理部门码 + 机构类别码 by unit kind (unit_kind codes of danwei.toml).
USCC_PREFIX = {"1": "91", "2": "92", "3": "11", "4": "12", "5": "52", "9": "93"}


def credit_code(kind: str, division: str, rng: random.Random) -> str:
    """A 统一社会信用代码 whose 组织机构代码 (GB 11714) and last character check out."""
    body = "".join(str(rng.randrange(10)) for _ in range(8))
    total = sum(int(c) * w for c, w in zip(body, (3, 7, 9, 10, 5, 8, 4, 2)))
    check = 11 - total % 11
    org = body + ("X" if check == 10 else "0" if check == 11 else str(check))
    number = USCC_PREFIX[kind] + division + org
    return number + uscc.calc_check_digit(number + "0")
