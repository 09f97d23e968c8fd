"""Host-side group membership: fork-group key -> bank slot, member refcounts, a free list, and the
groups that found the bank full (sampled stock for their whole life).

Every operation is O(1) and memory never grows past `capacity` slots plus the live stock groups.
Members come and go through `join(key)` / `leave(key)`, once each per member: a group refused a
slot stays stock while it has members, even if a slot frees up meanwhile; the table knows which
kind of group a key is, so `leave` needs nothing but the key.
"""

from __future__ import annotations


class GroupTable:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"esamp_max_groups must be an integer >= 1, got {capacity}")
        self.capacity = capacity
        self._slot: dict[str, int] = {}
        self._members: dict[str, int] = {}
        self._joined: dict[str, int] = {}  # members that ever joined the group's current slot
        # Stack; slot 0 is handed out first, and the most recently freed slot is reused first.
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._stock: dict[str, int] = {}  # group -> members, for groups that found the bank full
        self.refusals = 0  # joins refused a slot because the bank was full

    def join(self, key: str) -> int | None:
        """A new member of group `key`: the group's slot, or None when the group is sampled stock
        (it found the bank full when it arrived, and stays stock while it has members)."""
        if key in self._stock:
            self._stock[key] += 1
            return None
        slot = self._take_slot(key)
        if slot is None:
            self._stock[key] = 1
        return slot

    def leave(self, key: str) -> int | None:
        """A member of `key` left. Returns the slot when the last member of a slotted group left
        (the caller must reset it before reuse), else None. Unknown keys are ignored (None)."""
        if key in self._slot:
            return self._drop_member(key)
        left = self._stock.get(key, 0) - 1
        if left > 0:
            self._stock[key] = left
        else:
            self._stock.pop(key, None)
        return None

    def stock_members(self, key: str) -> int:
        """Members of `key` sampled stock because the bank was full (0: not a stock group)."""
        return self._stock.get(key, 0)

    @property
    def stock_groups(self) -> int:
        """Live groups sampled stock because the bank was full."""
        return len(self._stock)

    def _take_slot(self, key: str) -> int | None:
        """One more member of a slotted group: its slot (allocated on first use), or None when the
        bank is full (counted in `refusals`)."""
        slot = self._slot.get(key)
        if slot is None:
            if not self._free:
                self.refusals += 1
                return None
            slot = self._free.pop()
            self._slot[key] = slot
            self._members[key] = 0
            self._joined[key] = 0
        self._members[key] += 1
        self._joined[key] += 1
        return slot

    def _drop_member(self, key: str) -> int | None:
        """One member of a slotted group left: the slot when it was the last (freed), else None."""
        members = self._members[key]
        if members > 1:
            self._members[key] = members - 1
            return None
        del self._members[key]
        del self._joined[key]
        slot = self._slot.pop(key)
        self._free.append(slot)
        return slot

    def slot_of(self, key: str) -> int | None:
        return self._slot.get(key)

    def members(self, key: str) -> int:
        return self._members.get(key, 0)

    def joined(self, key: str) -> int:
        """Members that joined since the group got its slot (those that left included)."""
        return self._joined.get(key, 0)

    def slots(self) -> list[int]:
        """The slots of the live groups."""
        return list(self._slot.values())

    @property
    def slots_in_use(self) -> int:
        return len(self._slot)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: object) -> bool:
        return key in self._slot
