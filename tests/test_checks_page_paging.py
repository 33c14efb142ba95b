"""A check's page reads and opens only its page of cases (checks_pages.check_page): the cases of all
the years a check has closed (state "all" or "fixed") are counted in SQL, not each decrypted at every
view. Real store, real sample street with its planted cases, the page made in process with a page of
one case so that the street's cases make several pages."""

from __future__ import annotations

import pytest

from syncdb import cases, checks, checks_pages
from test_checks import CODES, Street

PAGE = 1  # the street's cases make several pages of one


@pytest.fixture(scope="module")
def street(tmp_path_factory, domains):
    root = tmp_path_factory.mktemp("checks-paging")
    (root / "keyfile").write_bytes(b"p" * 32)
    return Street(root, domains, root / "keyfile", codes=CODES[:1], residents=300)


def test_a_page_opens_only_its_own_cases_and_counts_the_rest(street, monkeypatch):
    monkeypatch.setattr(checks_pages, "PAGE", PAGE)
    with street.opened() as st:
        per_check: dict[str, int] = {}
        for item in cases.listing(st, states=tuple(cases.STATES)):
            per_check[item["check"]] = per_check.get(item["check"], 0) + 1
        name, total = max(per_check.items(), key=lambda kv: kv[1])
        assert total > PAGE, per_check  # the street's planted cases make more than one page
        everything = [c["id"] for c in checks.list_cases(st, name, None, tuple(cases.STATES), masked=False)]
        opened = []
        item = cases._item
        monkeypatch.setattr(cases, "_item", lambda store, row: opened.append(row[0]) or item(store, row))
        pages = (total + PAGE - 1) // PAGE
        seen = []
        for page in range(1, pages + 2):  # and one past the last, which shows the last
            opened.clear()
            got = checks_pages.check_page(st, name, plaintext=False, state="all", page=page)
            assert (got["count"], got["pages"], got["page"]) == (total, pages, min(page, pages))
            ids = [c["id"] for c in got["cases"]]
            assert ids == everything[(got["page"] - 1) * PAGE:got["page"] * PAGE]
            assert opened == ids, "a page opened cases it does not show"
            seen += ids if page <= pages else []
        assert seen == everything
