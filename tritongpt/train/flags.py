"""The numeric flags of the planning commands (train.plan, train.memory), parsed and range-checked
in one place: each command keeps a table {flag: Range}, and every value, from its command line or
from a call of its function, goes through check() before any arithmetic. A value outside its range
(inf, nan, 1e308, 1e-320, or merely absurd: a budget no run has had) is a FlagError, one line that
names the flag, its range and the value given.
"""

import math
import re
from dataclasses import dataclass

_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_AMOUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", flags=re.IGNORECASE)


class FlagError(ValueError):
    """A flag's value that cannot be used; the message names the flag."""


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    integer: bool = False
    amount: bool = False  # written as 124M, 1.3B or 1e20

    def text(self):
        return f"{'a whole number' if self.integer else 'a number'} in [{_short(self.lo)}, {_short(self.hi)}]"


def _short(x):
    return f"{x:,.0f}" if float(x).is_integer() and abs(x) < 1e7 else f"{x:g}"


def parse(name, text, limits):
    """The value of --name=text, checked against limits[name]."""
    r = limits[name]
    value = None
    if r.amount:
        m = _AMOUNT.fullmatch(str(text))
        value = float(m.group(1)) * _SUFFIX[m.group(2).upper()] if m else None
        example = " such as 124M, 1.3B or 1e20"
    else:
        try:
            value = int(text) if r.integer else float(text)
        except ValueError:
            pass
        example = ""
    if value is not None:
        try:
            return check(name, value, limits)
        except FlagError:
            pass
    raise FlagError(f"--{name} must be {r.text()}{example}; got {text!r}")


def check(name, value, limits):
    """`value` when it lies in limits[name]; a FlagError naming the flag otherwise."""
    r = limits[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and r.lo <= value <= r.hi
    if ok and r.integer:
        ok = float(value).is_integer()
    if not ok:
        raise FlagError(f"--{name} must be {r.text()}; got {value!r}")
    return int(value) if r.integer else value
