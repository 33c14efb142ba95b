"""Built-in cross-domain checks (信息比对), shipped as a plugin like any an office adds.

- ``deceased_paid``: a person deceased (or moved out of the street) in 户籍 whose
  民政 benefit is still paid, or, for the deceased, whose pension is still
  drawn: with the months paid since the death and the amount.
- ``permit_expired``: a migrant still living here whose 居住证 has expired, or
  whose yearly 签注 is overdue.
- ``rental_overfull``: a rented house where more registered residents and
  migrants live than its 核定居住人数.

docs/checks.md explains the interface; each check here is one ``Check``.
"""

from __future__ import annotations

from datetime import date, timedelta

from syncdb.checks import Check, Finding, Record, Records
from syncdb.hookspecs import hookimpl
from syncdb.i18n import N_, _

PERSONS, BENEFITS, ENROLMENTS = "huji.persons", "minzheng.benefits", "shebao.enrolments"
MIGRANTS, HOUSES = "liudong.migrants", "fangwu.houses"
PENSIONS = ("110", "120", "170")  # 险种 AAE140: the three basic pension schemes
INSURED = "1"  # 参保状态 参保缴费: a retiree stays insured and draws the pension


def _date(value) -> date | None:
    try:
        return date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _months(start: date, end: date) -> int:
    """Whole monthly payments from the month after ``start`` up to ``end``'s month."""
    return max(0, (end.year - start.year) * 12 + end.month - start.month)


def _by_id(table: str, record: Record):
    return [record.get("id_number")]


# ---------------------------------------------------------------- deceased or moved out, still paid

def _still_paid(person: Record, row: Record, death: date | None) -> bool:
    """Is a benefit of a person no longer here still running? For the deceased: unless it ended by
    the death date; for someone moved out (no date): while it is active."""
    if person["status"] == "moved_out":
        return row["status"] == "active"
    end = _date(row["end_date"])
    return row["status"] != "ended" or end is None or (death is not None and end > death)


def _pension_drawn(row: Record, death: date | None) -> bool:
    end = _date(row["end_date"])
    return (row["insurance_type"] in PENSIONS and row["retired"] == "1" and row["status"] == INSURED
            and (end is None or death is None or end > death))


def _paid_after(records: Records, person: Record, today: date) -> Finding | None:
    death = _date(person["death_date"]) if person["status"] == "deceased" else None
    ids = [person["id_number"]]
    benefits = [b for b in records.where(BENEFITS, "id_number", ids) if _still_paid(person, b, death)]
    pensions = [e for e in records.where(ENROLMENTS, "id_number", ids) if _pension_drawn(e, death)] \
        if person["status"] == "deceased" else []
    if not benefits and not pensions:
        return None
    paid, months_total, amount_total = [], 0, 0.0
    for b in benefits:
        months = _months(death, min(_date(b["end_date"]) or today, today)) if death else 0
        amount = round(months * float(b["monthly_amount"] or 0), 2)
        months_total, amount_total = max(months_total, months), amount_total + amount
        paid.append({"what": records.meaning(BENEFITS, "benefit_type", b["benefit_type"]),
                     "status": records.meaning(BENEFITS, "status", b["status"]),
                     "monthly_amount": b["monthly_amount"], "months": months, "amount": amount})
    for e in pensions:
        months = _months(death, min(_date(e["end_date"]) or today, today)) if death else 0
        months_total = max(months_total, months)
        paid.append({"what": records.meaning(ENROLMENTS, "insurance_type", e["insurance_type"]),
                     "status": records.meaning(ENROLMENTS, "status", e["status"]), "months": months})
    what = "、".join(p["what"] for p in paid)
    if death:
        message = _("deceased on {date}, yet still paid: {what}; {months} month(s) since the death, "
                    "{amount} yuan of benefits").format(date=death.isoformat(), what=what, months=months_total,
                                                        amount=f"{amount_total:.2f}")
    else:
        message = _("moved out of the street, yet still paid: {what}").format(what=what)
    evidence = [person["status"], person["death_date"]] + sorted(
        [r.table, r.key_values(), r.get("status"), r.get("end_date"), r.get("monthly_amount")]
        for r in benefits + pensions)
    return Finding(person["id_number"], message, [person, *benefits, *pensions],
                   {"status": person["status"], "death_date": person["death_date"], "paid": paid,
                    "months": months_total, "amount": round(amount_total, 2)},
                   evidence=evidence, community=person["community_code"])


def _find_paid(records: Records, subjects, settings):
    persons = records.rows(PERSONS) if subjects is None else records.where(PERSONS, "id_number", subjects)
    for person in persons:
        if person["status"] in ("deceased", "moved_out"):
            found = _paid_after(records, person, settings["today"])
            if found:
                yield found


DECEASED_PAID = Check(
    name="deceased_paid", title=N_("Deceased or moved out, yet still paid"),
    reads=(PERSONS, BENEFITS, ENROLMENTS), subject="person", find=_find_paid, subjects_of=_by_id, severity="high",
    description=N_("A person deceased or moved out in household registration whose civil-affairs benefit "
                   "(or, for the deceased, pension) is still paid."))


# ---------------------------------------------------------------- residence permits

def _year_after(day: date) -> date:
    if day.year >= date.max.year:  # a community may send any valid date: no year after 9999, never due
        return date.max
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year + 1, day=28)


def _days_after(day: date, days: int) -> date:
    try:
        return day + timedelta(days=days)
    except OverflowError:  # past 9999-12-31: never
        return date.max


def _permit_lapsed(migrant: Record, today: date, grace: int) -> Finding | None:
    expires = _date(migrant["permit_expires"])
    last = _date(migrant["permit_endorsed"]) or _date(migrant["permit_issued"])
    if expires and expires < today:
        message = _("residence permit expired on {date} ({days} days ago), yet still living here").format(
            date=expires.isoformat(), days=(today - expires).days)
        figures = {"permit_expires": expires.isoformat(), "days": (today - expires).days, "lapse": "expired"}
    elif last and _days_after(_year_after(last), grace) < today:
        due = _year_after(last)
        message = _("the residence permit's yearly endorsement was due on {date} ({days} days ago), yet still "
                    "living here").format(date=due.isoformat(), days=(today - due).days)
        figures = {"endorsement_due": due.isoformat(), "days": (today - due).days, "lapse": "endorsement"}
    else:
        return None
    evidence = [figures["lapse"], migrant["permit_no"], migrant["permit_issued"], migrant["permit_endorsed"],
                migrant["permit_expires"]]
    return Finding(migrant["id_number"], message, [migrant], figures, evidence=evidence,
                   community=migrant["community_code"])


def _find_permits(records: Records, subjects, settings):
    migrants = records.rows(MIGRANTS) if subjects is None else records.where(MIGRANTS, "id_number", subjects)
    for migrant in migrants:
        if migrant["leaving_date"] is None and (migrant["permit_expires"] or migrant["permit_issued"]):
            found = _permit_lapsed(migrant, settings["today"], int(settings["endorsement_grace_days"]))
            if found:
                yield found


PERMIT_EXPIRED = Check(
    name="permit_expired", title=N_("Residence permit expired, still living here"),
    reads=(MIGRANTS,), subject="person", find=_find_permits, subjects_of=_by_id, severity="medium",
    settings={"endorsement_grace_days": 0},
    description=N_("A migrant still living here whose residence permit has expired or whose yearly "
                   "endorsement is overdue (by more than endorsement_grace_days)."))


# ---------------------------------------------------------------- rentals over capacity

def _living(records: Records, house: Record) -> tuple[list[Record], list[Record]]:
    """(registered residents, migrants) living in the house. Residents are registered by address:
    they are counted in a house only where the house is its address's one house (same code)."""
    residents = [p for p in records.where(PERSONS, "address_code", [house["address_code"]])
                 if p["status"] == "normal"] if house["house_code"] == house["address_code"] else []
    migrants = [m for m in records.where(MIGRANTS, "house_code", [house["house_code"]]) if m["leaving_date"] is None]
    return residents, migrants


def _find_overfull(records: Records, subjects, settings):
    houses = records.rows(HOUSES) if subjects is None else records.where(HOUSES, "house_code", subjects)
    rented = [h for h in houses if h["rented"] == "1" and h["capacity"] is not None]
    # Everyone living in any of them, read at once: each house's look-up below then finds its own in memory.
    records.where(PERSONS, "address_code", [h["address_code"] for h in rented if h["house_code"] == h["address_code"]])
    records.where(MIGRANTS, "house_code", [h["house_code"] for h in rented])
    for house in houses:
        if house["rented"] != "1" or house["capacity"] is None:
            continue
        residents, migrants = _living(records, house)
        living = len(residents) + len(migrants)
        if living > int(house["capacity"]):
            message = _("{living} people live in this rented house ({residents} registered residents, {migrants} "
                        "migrants); its approved capacity is {capacity}").format(
                living=living, residents=len(residents), migrants=len(migrants), capacity=house["capacity"])
            yield Finding(house["house_code"], message, [house, *residents, *migrants],
                          {"capacity": house["capacity"], "living": living, "residents": len(residents),
                           "migrants": len(migrants)}, community=house["community_code"])


def _houses_of(table: str, record: Record):
    if table == HOUSES:
        return [record.get("house_code")]
    if table == MIGRANTS:
        return [record.get("house_code")]
    return [record.get("address_code")]  # a resident: the house that is their address's one house


RENTAL_OVERFULL = Check(
    name="rental_overfull", title=N_("Rented house over its approved capacity"),
    reads=(HOUSES, PERSONS, MIGRANTS), subject="house", find=_find_overfull, subjects_of=_houses_of,
    severity="medium",
    # Who lives where and how many a house takes: a change of anything else moves no count.
    watches={HOUSES: frozenset({"house_code", "address_code", "rented", "capacity", "community_code"}),
             PERSONS: frozenset({"address_code", "status"}),
             MIGRANTS: frozenset({"house_code", "leaving_date"})},
    # Who lives in a house: its residents by their address, its migrants by their house (indexed in the store).
    lookups={PERSONS: ("address_code",), MIGRANTS: ("house_code",)},
    description=N_("A rented house where more registered residents and migrants live than its approved capacity."))


@hookimpl
def cross_checks():
    return [DECEASED_PAID, PERMIT_EXPIRED, RENTAL_OVERFULL]
