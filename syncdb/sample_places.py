"""Standard addresses, houses, units and grids of a sample community (一标三实).

A Dongguan community is a few old villages (their lanes lined with the
families' own four-to-eight-storey buildings, most floors let to migrant
workers), estates of flats along the main roads, and an industrial park whose
factories lodge their workers in leased dormitories. ``Places`` builds that
layout on demand: registered households ask for a home (``home``), migrants
for beds in a rented house (``lodge``); every address, house and unit is made
the first time someone needs it, so a bigger community starts like a smaller
one. Grids come last (``draw_grids``), cut from the addresses in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from .sample_ids import credit_code
from .sample_people import TODAY, years

# Villages (自然村) of the Pearl River delta and Dongguan's main roads: names
# of the kind found there, combined per community.
VILLAGES = ["温塘", "桑园", "峡口", "牛山", "周屋", "余屋", "上桥", "下桥", "柏洲边", "鳌峙塘", "立新", "石井",
            "火炼树", "主山", "涡岭", "同沙", "樟村", "黄旗", "榴花", "堑头", "新锡边", "大井头", "岗贝", "罗沙",
            "博厦", "篁村", "胜和", "元美", "白马", "雍景"]
MAIN_ROADS = ["东城大道", "莞樟路", "东纵路", "旗峰路", "光明路", "东城中路", "樟村路", "主山大道", "莞龙路",
              "环城路", "东宝路", "育华路", "鸿福路", "银丰路", "沿河路", "新城路"]
NUMERALS = "一二三四五六七八九十"
# The street offices (街道/镇) of 东莞市 by their 3-digit segment of the 统计用区划代码.
DONGGUAN_STREETS = {
    "001": "东城街道", "002": "南城街道", "003": "东城街道", "004": "南城街道", "005": "万江街道",
    "006": "莞城街道", "101": "石碣镇", "102": "石龙镇", "103": "茶山镇", "104": "石排镇", "105": "企石镇",
    "106": "横沥镇", "107": "桥头镇", "108": "谢岗镇", "109": "东坑镇", "110": "常平镇", "111": "寮步镇",
    "112": "樟木头镇", "113": "大朗镇", "114": "黄江镇", "115": "清溪镇", "116": "塘厦镇", "117": "凤岗镇",
    "118": "大岭山镇", "119": "长安镇", "121": "虎门镇", "122": "厚街镇", "123": "沙田镇", "124": "道滘镇",
    "125": "洪梅镇", "126": "麻涌镇", "127": "望牛墩镇", "128": "中堂镇", "129": "高埗镇",
}
SHOPS = ["士多店", "五金店", "快餐店", "粉面店", "理发店", "便利店", "手机维修店", "服装店", "药店", "水果店"]
HOUSEHOLDS_PER_GRID = 400  # grids hold 300–500 households


def numeral(n: int) -> str:
    if n <= 10:
        return NUMERALS[n - 1]
    return ("" if n < 20 else NUMERALS[n // 10 - 1]) + "十" + (NUMERALS[n % 10 - 1] if n % 10 else "")


def landline(rng: random.Random) -> str:
    return f"0769{rng.randint(2, 8)}{rng.randrange(10**7):07d}"


@dataclass
class Lodging:
    """A house with beds to let: how many may live there and how many do."""

    house: dict
    target: int  # landlords rarely fill a house to its 核定居住人数
    living: int = 0

    @property
    def free(self) -> int:
        return self.target - self.living


@dataclass
class Places:
    code: str
    rng: random.Random
    place: str  # 广东省东莞市
    companies: list[str]
    names: list[str]  # full names for owners and legal persons who live elsewhere
    addresses: list[dict] = field(default_factory=list)
    houses: list[dict] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)
    grids: list[dict] = field(default_factory=list)
    households_at: dict[str, int] = field(default_factory=dict)  # address_code → registered households
    lodgings: list[Lodging] = field(default_factory=list)  # every let house people live in

    def __post_init__(self):
        rng = self.rng
        villages = rng.sample(VILLAGES, 4)
        self.community_name = villages[0] + "社区"
        self.street_office = DONGGUAN_STREETS.get(self.code[6:9], "城区街道")
        self.villages = villages
        self.main_roads = rng.sample(MAIN_ROADS, 4)
        self.park = f"{villages[0]}工业区"
        self._lanes = 0  # village lanes opened so far, and doors used on the last one
        self._lane_doors = self._lane_size = 0
        self._estate = None  # (road, door, 单元 per building, flats per floor, flats) being filled
        self._flat = 0
        self._doors: dict[str, int] = {}
        self.vacant: list[dict] = []  # flats nobody registered lives in
        self.open: dict[str, list[Lodging]] = {"village": [], "flat": [], "dorm": []}  # houses with free beds
        self.landlords: list = []  # native heads of household, who own the village's buildings
        self.by_address: dict[str, dict] = {}

    # -- addresses -------------------------------------------------------------

    def _address(self, road, door_no, building=None, unit=None, room=None) -> dict:
        address = {"address_code": f"{self.code}{len(self.addresses) + 1:06d}", "road": road, "door_no": door_no,
                   "building": building, "unit": unit, "room": room, "grid_code": None,
                   "community_code": self.code}
        self.addresses.append(address)
        self.by_address[address["address_code"]] = address
        return address

    def text(self, address: dict) -> str:
        """The address as a person writes it: province to room."""
        parts = [self.place, self.street_office, self.community_name, address["road"], address["door_no"],
                 address["building"], address["unit"], address["room"] and address["room"] + "房"]
        return "".join(p for p in parts if p)

    def _door(self, road: str, step: int = 2) -> str:
        """The next door number along a road, skipping a few (plots without a standard address yet)."""
        self._doors[road] = self._doors.get(road, 0) + self.rng.randint(1, step)
        return f"{self._doors[road]}号"

    def _village_door(self) -> tuple[str, str]:
        if self._lane_doors >= self._lane_size:
            self._lanes += 1
            self._lane_doors, self._lane_size = 0, self.rng.randint(12, 36)
        self._lane_doors += 1
        village = self.villages[(self._lanes - 1) % len(self.villages)]
        lane = (self._lanes - 1) // len(self.villages) + 1
        return f"{village}新村{numeral(lane)}巷", f"{self._lane_doors}号"

    def _house(self, address, use, rooms=None, owner=None, owner_name=None, suffix="") -> dict:
        house = {"house_code": address["address_code"] + suffix, "address_code": address["address_code"],
                 "use": use, "owner_id_number": owner.id_number if owner else None,
                 "owner_name": owner.name if owner else owner_name, "rented": "0", "rooms": rooms,
                 "capacity": None, "landlord_phone": None, "rental_registered": None, "rental_expires": None,
                 "community_code": self.code}
        self.houses.append(house)
        return house

    def _let(self, house: dict, capacity: int | None, phone: str | None) -> None:
        """Register a house as let (出租登记, renewed every three years)."""
        registered = TODAY - timedelta(days=self.rng.randint(10, 3 * 365 - 10))
        house.update(rented="1", capacity=capacity, landlord_phone=phone or landline(self.rng),
                     rental_registered=registered.isoformat(),
                     rental_expires=(registered + years(3)).isoformat())

    def _open(self, house: dict, kind: str, target: int, living: int = 0) -> Lodging:
        """Offer a let house's beds to migrants, up to ``target`` people living there."""
        lodging = Lodging(house, target, living)
        self.open[kind].append(lodging)
        self.lodgings.append(lodging)
        return lodging

    # -- registered households -------------------------------------------------

    def home(self, household, native: bool) -> dict:
        """An address for a registered household: a dormitory, the family's own building, or a flat."""
        living = sum(p.status == "normal" for p in household.members)
        if household.type == "collective":
            dormitory = self._dormitory(household.employer)
            # The registered workers take beds that migrants then cannot.
            dormitory.living += living
            address = self.by_address[dormitory.house["address_code"]]
        elif native and self.rng.random() < 0.6:
            address = self._family_building(household.head, living)
        else:
            address = self._flat_for(household.head)
        code = address["address_code"]
        self.households_at[code] = self.households_at.get(code, 0) + 1
        return address

    def _family_building(self, head, living: int) -> dict:
        """The family's own building in the village; two in five let their other floors."""
        road, door = self._village_door()
        address = self._address(road, door)
        rooms = self.rng.randint(4, 16)
        house = self._house(address, "10", rooms, owner=head)
        self.landlords.append(head)
        if self.rng.random() < 0.4:
            self._let(house, living + 2 * rooms, head.phone)
            self._open(house, "village", living + int(2 * rooms * self.rng.uniform(0.55, 0.9)), living)
        return address

    def _next_flat(self) -> tuple[dict, dict]:
        rng = self.rng
        if self._estate is None or self._flat >= len(self._estate[4]):
            road = rng.choice(self.main_roads)
            door = self._door(road, 8)
            buildings, floors, per_floor = rng.randint(4, 16), rng.randint(7, 32), rng.randint(2, 6)
            # Buildings with four flats or more a floor have two stairwells (单元); a few smaller ones too.
            units = [per_floor >= 4 or rng.random() < 0.3 for _ in range(buildings + 1)]
            flats = [(b, f, r) for b in range(1, buildings + 1) for f in range(2, floors + 1)
                     for r in range(1, per_floor + 1)]
            self._estate, self._flat = (road, door, units, per_floor, flats), 0
        road, door, units, per_floor, flats = self._estate
        building, floor, room = flats[self._flat]
        self._flat += 1
        unit = f"{1 + (room - 1) // 2}单元" if units[building] else None
        address = self._address(road, door, f"{building}栋", unit, f"{floor}{room:02d}")
        house = self._house(address, "10", rng.choice([2, 3, 3, 4, 4, 5]))
        return address, house

    def _flat_for(self, head) -> dict:
        while True:
            address, house = self._next_flat()
            if self.rng.random() < 0.7:  # the others are empty, or their owners' 户口 is elsewhere
                break
            house["owner_name"] = self.rng.choice(self.names)
            self.vacant.append(house)
        if self.rng.random() < 0.85:
            house["owner_id_number"], house["owner_name"] = head.id_number, head.name
        else:
            house["owner_name"] = self.rng.choice(self.names)
        return address

    # -- factories, shops and institutions --------------------------------------

    def _dormitory(self, company: str | None = None) -> Lodging:
        """A factory in the industrial park and the dormitory it leases for its workers."""
        rng = self.rng
        road = f"{self.park}{rng.choice('东南西北中')}路"
        door = self._door(road, 3)
        factory = self._address(road, door)
        collective = f"{self.villages[0]}股份经济合作社"  # the village collective owns the park
        self._let(self._house(factory, "40", owner_name=collective), None, None)
        rooms = rng.randint(20, 70)
        dorm = self._house(self._address(road, door, "宿舍1栋"), "50", rooms, owner_name=collective)
        self._let(dorm, rooms * 6, None)
        self._unit(company or rng.choice(self.companies), "1", factory, rng.randint(40, 900))
        return self._open(dorm, "dorm", int(rooms * 6 * rng.uniform(0.6, 0.9)))

    def _unit(self, name: str, kind: str, address: dict | None, employees: int) -> dict:
        rng = self.rng
        unit = {"credit_code": credit_code(kind, self.code[:6], rng), "name": name, "kind": kind,
                "address_code": address["address_code"] if address else None,
                "legal_person": rng.choice(self.names), "phone": landline(rng), "employees": employees,
                "community_code": self.code}
        self.units.append(unit)
        return unit

    def amenities(self) -> None:
        """A few shops in the families' ground floors, a school, a clinic and a kindergarten."""
        rng = self.rng
        own = [h for h in self.houses if h["use"] == "10" and h["owner_id_number"] and not self.by_address[
            h["address_code"]]["building"]]
        for house in rng.sample(own, min(len(own), 3 + len(own) // 80)):
            address = self.by_address[house["address_code"]]
            shop = self._house(address, "20", 1, owner_name=house["owner_name"], suffix="01")
            shop["owner_id_number"] = house["owner_id_number"]
            self._let(shop, None, house["landlord_phone"])
            unit = self._unit(f"{self.villages[0]}{rng.choice(SHOPS)}", "2", address, rng.randint(1, 5))
            unit["name"] = f"东莞市{self.street_office[:2]}{unit['name']}"
        for name, kind in ((f"{self.community_name}卫生服务站", "4"), (f"{self.villages[1]}小学", "4"),
                           (f"{self.villages[0]}幼儿园", "5")):
            road = rng.choice(self.main_roads)
            address = self._address(road, self._door(road))
            self._house(address, "30" if kind == "4" and "卫生" in name else "90", rng.randint(6, 40),
                        owner_name=f"{self.villages[0]}股份经济合作社")
            self._unit(f"东莞市{self.street_office[:2]}{name}", kind, address, rng.randint(8, 80))

    # -- migrants ----------------------------------------------------------------

    def lodge(self, size: int, kind: str) -> dict:
        """A rented house with beds for ``size`` people of one group; opens a new one when all are taken.

        A group that has left (size 0) is given a house it lived in, and takes no bed.
        """
        lodging = self._find(size, kind) or self._new_lodging(kind, size)
        lodging.living += size
        return lodging.house

    def _find(self, size: int, kind: str) -> Lodging | None:
        open_ = self.open[kind]
        # Drop the full ones at the front; look a little way in for room, like a migrant asking around.
        while open_ and open_[0].free <= 0:
            open_.pop(0)
        return next((lodging for lodging in open_[:12] if lodging.free >= size), None)

    def _new_lodging(self, kind: str, size: int) -> Lodging:
        rng = self.rng
        if kind == "dorm":
            return self._dormitory()
        if kind == "flat":
            house = self.vacant.pop(0) if self.vacant else self._next_flat()[1]
            capacity = max(size, house["rooms"] * 2)
            self._let(house, capacity, None)
            return self._open(house, "flat", capacity)
        road, door = self._village_door()
        landlord = rng.choice(self.landlords) if self.landlords else None
        rooms = rng.randint(8, 30)
        house = self._house(self._address(road, door), "10", rooms, owner=landlord,
                            owner_name=None if landlord else rng.choice(self.names))
        capacity = max(size, rooms * 2)
        self._let(house, capacity, landlord.phone if landlord else None)
        return self._open(house, "village", max(size, int(capacity * rng.uniform(0.6, 0.95))))

    # -- grids -------------------------------------------------------------------

    def draw_grids(self, names: list[str], phone) -> None:
        """Cut the addresses, in order, into grids of about 400 registered households, each with a grid worker."""
        total = sum(self.households_at.values())
        count = max(1, round(total / HOUSEHOLDS_PER_GRID))
        for n in range(1, count + 1):
            self.grids.append({"grid_code": f"{self.code}{n:03d}", "name": f"{self.community_name}第{numeral(n)}网格",
                               "worker_name": self.rng.choice(names), "worker_phone": phone(),
                               "community_code": self.code})
        grid, seen = 0, 0
        for address in sorted(self.addresses, key=_street_order):
            seen += self.households_at.get(address["address_code"], 0)
            address["grid_code"] = self.grids[grid]["grid_code"]
            # Move on once this grid holds its share of all households.
            if grid < count - 1 and seen >= total * (grid + 1) / count:
                grid += 1


def _street_order(address: dict) -> tuple:
    """Addresses along their road: a grid is a stretch of streets, not a scatter."""
    door = int(address["door_no"].rstrip("号"))
    return (address["road"], door, address["building"] or "", address["room"] or "", address["address_code"])

