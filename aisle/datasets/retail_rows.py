"""Online Retail rows → valid invoice lines, or the reason each row is left out.

Reasons (counted in :class:`~aisle.datasets.stats.ReplayStats`):

- ``non-product stock code``: anything that is not a product code. Products are five
  digits with at most two letters (``85123A``, ``15056BL``) or the web shop's ``DCGS…``
  codes; the rest are postage, fees, discounts and manual entries (``POST``, ``DOT``,
  ``M``, ``D``, ``C2``, ``S``, ``CRUK``, ``PADS``, ``B``, ``AMAZONFEE``,
  ``BANK CHARGES``, ``gift_0001_*``). A few product-shaped codes are services too; they
  are named by their description (:data:`SERVICE_TITLES`, any "gift voucher").
- ``no price: adjustment or free line``: UnitPrice <= 0 (damages, stock fixes, gifts).
- ``stock adjustment``: Quantity <= 0 on a sale invoice.
- ``invalid <field>``: a value the event schema would reject (bad id charset, date,
  number, bound); ``malformed row``: wrong column count.

The checks run in that order, so a row is counted once, under the first that fails.
Stock codes are upper-cased: the file writes ``85123a`` and ``85123A`` for one product.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

import msgspec

from aisle.datasets.titles import category_of
from streams.events import FUTURE_SLACK_S, MIN_TS, Id, OrderLine

COLUMNS: Final = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                  "UnitPrice", "CustomerID", "Country")
CURRENCY: Final = "GBP"
UK: Final = ZoneInfo("Europe/London")

SKIP_NON_PRODUCT: Final = "non-product stock code"
SKIP_NO_PRICE: Final = "no price: adjustment or free line"
SKIP_STOCK_ADJUSTMENT: Final = "stock adjustment"
SKIP_MALFORMED: Final = "malformed row"

PRODUCT_CODE: Final = re.compile(r"^(?:\d{5}[A-Z]{0,2}|DCGS[0-9A-Z]+)$")
SERVICE_TITLES: Final = frozenset({"next day carriage", "packing charge",
                                   "high resolution image"})


def is_product(stock_code: str, description: str) -> bool:
    """Whether a (normalised) stock code and its description name a product.

    >>> is_product("85123A", "WHITE HANGING HEART T-LIGHT HOLDER"), is_product("POST", "POSTAGE")
    (True, False)
    >>> is_product("23444", "Next Day Carriage"), is_product("GIFT_0001_20", "Voucher")
    (False, False)
    """
    if not PRODUCT_CODE.match(stock_code):
        return False
    title = description.strip().lower()
    return title not in SERVICE_TITLES and "gift voucher" not in title


def uk_time(text: str) -> datetime:
    """An InvoiceDate (UK local time) as an aware UTC datetime.

    Accepts this copy's ``2010-12-01 08:26:00`` and the UCI spreadsheet's ``12/1/2010 8:26``.

    >>> uk_time("2011-06-01 10:00:00").isoformat()  # British Summer Time is UTC+1
    '2011-06-01T09:00:00+00:00'
    >>> uk_time("12/1/2010 8:26").isoformat()
    '2010-12-01T08:26:00+00:00'
    """
    text = text.strip()
    try:
        local = datetime.fromisoformat(text)
    except ValueError:
        local = datetime.strptime(text, "%m/%d/%Y %H:%M")
    if local.tzinfo is None:
        local = local.replace(tzinfo=UK)
    return local.astimezone(UTC)


def customer_id(text: str) -> str | None:
    """CustomerID → user id; ``None`` for a guest. ``"17850.0"`` (a float-typed export)
    is ``"17850"``.

    >>> customer_id("17850.0"), customer_id(" 17850 "), customer_id("")
    ('17850', '17850', None)
    """
    text = text.strip()
    if not text:
        return None
    whole, dot, fraction = text.partition(".")
    return whole if dot and fraction.strip("0") == "" and whole else text


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One row that passed every check."""

    invoice: str
    cancelled: bool
    user_id: str | None
    when: datetime
    ts: float
    line: OrderLine
    title: str


def parse_row(row: list[str]) -> InvoiceLine | str:
    """A CSV row (in :data:`COLUMNS` order) → a valid line, or the reason to skip it."""
    if len(row) != len(COLUMNS):
        return SKIP_MALFORMED
    invoice, code, description, quantity_text, date_text, price_text, customer, _ = row
    code = code.strip().upper()
    if not is_product(code, description):
        return SKIP_NON_PRODUCT
    try:
        quantity, price = int(quantity_text), float(price_text)
    except ValueError:
        return "invalid Quantity or UnitPrice"
    if not math.isfinite(price):
        return "invalid UnitPrice"
    if price <= 0:
        return SKIP_NO_PRICE
    invoice = invoice.strip()
    cancelled = invoice.startswith("C")
    if quantity <= 0 and not cancelled:
        return SKIP_STOCK_ADJUSTMENT
    if quantity >= 0 and cancelled:
        return "invalid Quantity: not negative on a cancellation"
    return _checked(invoice, cancelled, code, abs(quantity), price, date_text, customer,
                    description)


def _checked(invoice: str, cancelled: bool, code: str, quantity: int, price: float,
             date_text: str, customer: str, description: str) -> InvoiceLine | str:
    when = _invoice_time(date_text)
    if isinstance(when, str):
        return when
    user_id = customer_id(customer)
    if not _is_id(invoice) or (user_id is not None and not _is_id(user_id)):
        return "invalid InvoiceNo or CustomerID"
    title = " ".join(description.split())[:300] or code
    try:
        # The category rides on the line so customers' category affinities need no
        # catalog lookup in the fold (folds read nothing but the event).
        line = msgspec.convert({"item_id": code, "quantity": quantity, "unit_price": price,
                                "currency": CURRENCY, "category": category_of(title)},
                               OrderLine)
    except msgspec.ValidationError as exc:
        return f"invalid {_field_of(exc)}"
    return InvoiceLine(invoice, cancelled, user_id, when, when.timestamp(), line, title)


# Both caches pay: a file repeats each timestamp, invoice and customer many times.
@lru_cache(maxsize=4096)
def _invoice_time(text: str) -> datetime | str:
    try:
        when = uk_time(text)
    except ValueError:
        return "invalid InvoiceDate"
    if not MIN_TS <= when.timestamp() <= time.time() + FUTURE_SLACK_S:
        return "invalid InvoiceDate: out of range"
    return when


@lru_cache(maxsize=65536)
def _is_id(text: str) -> bool:
    try:
        msgspec.convert(text, Id)
    except msgspec.ValidationError:
        return False
    return True


def _field_of(exc: msgspec.ValidationError) -> str:
    found = re.search(r"`\$\.(\w+)`", str(exc))
    return found.group(1) if found else "value"
