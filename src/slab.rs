//! Connection slots indexed by `mio::Token`, each with a generation number.
//!
//! A slot is reused after its connection closes; the generation tells a timer
//! or a room entry that still names the old occupant that it is stale.

/// Where a value lives: its slot index and the generation of that occupant
/// (eight bytes: timers hold one each, and there is a timer per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId {
    index: u32,
    generation: u32,
}

impl SlotId {
    pub fn index(self) -> usize {
        self.index as usize
    }
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab::new()
    }
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` and returns its id.
    pub fn insert(&mut self, value: T) -> SlotId {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index];
            slot.generation = slot.generation.wrapping_add(1);
            slot.value = Some(value);
            return SlotId {
                index: index as u32,
                generation: slot.generation,
            };
        }
        // Slots never outnumber open files, far below u32::MAX.
        let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 slots");
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        SlotId {
            index,
            generation: 0,
        }
    }

    /// The value at `index`, whatever its generation.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.slots.get(index).and_then(|slot| slot.value.as_ref())
    }

    /// The value at `index`, whatever its generation.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slots
            .get_mut(index)
            .and_then(|slot| slot.value.as_mut())
    }

    /// The value only if `id` still names its current occupant.
    pub fn get_live_mut(&mut self, id: SlotId) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index())?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    /// The id of whatever occupies `index` now.
    pub fn id_of(&self, index: usize) -> Option<SlotId> {
        let slot = self.slots.get(index)?;
        slot.value.as_ref().map(|_| SlotId {
            index: index as u32,
            generation: slot.generation,
        })
    }

    pub fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.slots.get_mut(index)?.value.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// Indices of every occupied slot.
    pub fn indices(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].value.is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_slots_get_a_new_generation() {
        let mut slab = Slab::new();
        let first = slab.insert("a");
        assert_eq!(slab.remove(first.index()), Some("a"));
        let second = slab.insert("b");
        assert_eq!(second.index(), first.index());
        assert_ne!(second.generation, first.generation);
        assert!(slab.get_live_mut(first).is_none());
        assert_eq!(slab.get_live_mut(second), Some(&mut "b"));
        assert_eq!(slab.len(), 1);
    }
}
