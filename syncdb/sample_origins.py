"""Where sample people come from, and what follows from it: ethnicity and schooling.

Dongguan's registered residents are almost all 汉族 Cantonese; its floating
population comes mostly from the inland provinces around Guangdong, and
brings their minorities with it (壮族 from Guangxi, 土家族 from Hunan and
Hubei, 苗族 and 布依族 from Guizhou, 彝族 from Sichuan …).
"""

from __future__ import annotations

import random
from datetime import date

# Where Dongguan's migrants come from (province code → weight), after the
# 2020 census's figures for Guangdong's inter-provincial migrants.
MIGRANT_PROVINCES = {
    "43": 22, "45": 17, "51": 11, "41": 10, "36": 10, "52": 8, "42": 8, "50": 5, "44": 6, "35": 3,
}

# GB 3304 ethnicity codes by province (‰, rounded from the 2020 census); 汉族 "01" takes the rest.
_MINORITIES = {
    "44": {"13": 2.0, "08": 1.5, "15": 1.0, "06": 0.5, "22": 0.3},  # 广东: 瑶 壮 土家 苗 畲
    "45": {"08": 310, "13": 35, "06": 11, "12": 7, "32": 4, "36": 1.5, "49": 0.5},  # 广西
    "43": {"15": 40, "06": 33, "12": 13, "13": 11, "04": 0.5},  # 湖南
    "42": {"15": 36, "06": 4, "12": 1.2},  # 湖北
    "51": {"07": 33, "04": 18, "33": 4, "06": 2, "03": 1},  # 四川
    "52": {"06": 120, "09": 72, "12": 40, "15": 36, "07": 22, "37": 14, "25": 9, "03": 5},  # 贵州
    "50": {"15": 46, "06": 15},  # 重庆
    "41": {"03": 10, "11": 1.5, "02": 0.7},  # 河南
    "36": {"22": 2, "13": 0.3},  # 江西
    "35": {"22": 9, "03": 3},  # 福建
}
_ELSEWHERE = {"03": 8, "11": 6, "02": 3}  # provinces not listed above: 回 满 蒙古


def ethnicity(rng: random.Random, province: str) -> str:
    """An ethnicity code drawn from the given province's population."""
    shares = _MINORITIES.get(province, _ELSEWHERE)
    draw = rng.random() * 1000
    for code, share in shares.items():
        draw -= share
        if draw < 0:
            return code
    return "01"


def migrant_province(rng: random.Random) -> str:
    return rng.choices(list(MIGRANT_PROVINCES), list(MIGRANT_PROVINCES.values()))[0]


# GB/T 4658-2006 文化程度 codes as people carry them: the finished level, or
# the school they attend. 90 其他 stands for no schooling.
_ADULT_SCHOOLING = [
    # (born before, {code: weight}) for natives; migrants shift one step down.
    (1950, {"90": 25, "81": 40, "71": 25, "61": 8, "31": 2}),
    (1970, {"81": 18, "71": 40, "61": 25, "41": 5, "31": 7, "21": 5}),
    (1985, {"81": 5, "71": 33, "61": 24, "41": 8, "44": 4, "47": 4, "31": 12, "21": 9, "14": 1}),
    (9999, {"71": 15, "61": 15, "41": 8, "44": 5, "47": 5, "31": 25, "21": 23, "14": 4}),
]
_MIGRANT_SCHOOLING = {"90": 1, "81": 12, "71": 45, "61": 15, "41": 6, "44": 4, "47": 6, "31": 8, "21": 3}


def education(rng: random.Random, birth: date, years_old: int, migrant: bool = False) -> str | None:
    """A 文化程度 code plausible for the age and birth year; None before school age."""
    if years_old < 7:
        return None
    if years_old < 13:
        return "80"  # 小学教育
    if years_old < 16:
        return "70"  # 初级中学教育
    if years_old < 19:
        return "60" if rng.random() < 0.6 else "40"  # 普通高中 or 中等职业教育
    if migrant and birth.year >= 1970:
        table = _MIGRANT_SCHOOLING
    else:
        table = next(t for before, t in _ADULT_SCHOOLING if birth.year < before)
    return rng.choices(list(table), list(table.values()))[0]
