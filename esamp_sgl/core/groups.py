"""Host-side map from fork-group key to bank slot, with member refcounts and a free list.

Every operation is O(1) and memory never grows past `capacity` slots. Contract: call
`release(key)` exactly once for every `acquire(key)` that returned a slot (not for the ones that
returned None): the refcount counts members, and a member that never got a slot is not one.
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

    def acquire(self, key: str) -> int | None:
        """The group's slot (allocating one on first use), or None when the bank is full."""
        slot = self._slot.get(key)
        if slot is None:
            if not self._free:
                return None
            slot = self._free.pop()
            self._slot[key] = slot
            self._members[key] = 0
            self._joined[key] = 0
        self._members[key] += 1
        self._joined[key] += 1
        return slot

    def release(self, key: str) -> int | None:
        """Drop one member. Returns the slot when the last member left (the caller must reset
        it before reuse), else None. Unknown keys are ignored (returns None)."""
        members = self._members.get(key)
        if members is None:
            return None
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
