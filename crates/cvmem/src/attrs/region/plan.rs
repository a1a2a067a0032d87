//! Planning a change to a region: the new contents of its (at most two) partly covered 2M
//! pages and the run of whole pages between them, whether anything changes, and the room it
//! needs.

use super::*;

impl Region {
    /// What setting offsets `[lo, hi)` to `v` does: the new contents of the partly covered 2M
    /// pages that change, worked out from their inline codes without decoding unless a page is
    /// a block or outgrows the inline form, and the whole pages in between.
    #[inline(always)]
    pub(in crate::attrs) fn plan(&self, lo: u32, hi: u32, v: bool) -> Plan {
        debug_assert!(lo < hi && hi <= REGION_GFNS);
        let (p, q) = (lo / PAGE_GFNS, (hi - 1) / PAGE_GFNS);
        let (a, b) = (lo % PAGE_GFNS, (hi - 1) % PAGE_GFNS + 1);
        let mut edges = [None, None];
        let full = if p == q && (a != 0 || b != PAGE_GFNS) {
            edges[0] = self.edit(p, a, b, v);
            (0, 0)
        } else {
            // The later page first: storing it moves no earlier page's rank.
            if b != PAGE_GFNS {
                edges[0] = self.edit(q, 0, b, v);
            }
            if a != 0 {
                edges[1] = self.edit(p, a, PAGE_GFNS, v);
            }
            (p + u32::from(a != 0), q + u32::from(b == PAGE_GFNS))
        };
        let full_changes = full.0 < full.1 && self.run_changes(full.0, full.1, v);
        Plan {
            edges,
            full,
            v,
            full_changes,
        }
    }

    /// Whether making whole pages `[a, b)` all `v` changes any: one is mixed or of the other
    /// kind.
    pub(super) fn run_changes(&self, a: u32, b: u32, v: bool) -> bool {
        block::find(&self.mixed, a, false).is_some_and(|q| q < b)
            || block::find(&self.first, a, v).is_some_and(|q| q < b)
    }

    /// Page `p` with offsets `[a, b)` in it set to `v`: `None` when that changes nothing.
    #[inline(always)]
    pub(super) fn edit(&self, p: u32, a: u32, b: u32, v: bool) -> Option<(At, Content)> {
        let at = self.at(p);
        let inline = match at.stored {
            Stored::Uniform(first) => Some((0, first)),
            Stored::Inline { code, first } => Some((code, first)),
            Stored::Block { .. } | Stored::Dense { .. } => None,
        };
        if let Some((code, first)) = inline {
            if let Some((new, new_first)) = block::inline_set(code, first, a, b, v) {
                return if (new, new_first) == (code, first) {
                    None
                } else if block::inline_count(new) == 0 {
                    Some((at, Content::Uniform(new_first)))
                } else {
                    Some((
                        at,
                        Content::Inline {
                            code: new,
                            first: new_first,
                        },
                    ))
                };
            }
        }
        // A block, a mixed page of a dense region, or a code outgrowing the inline form: a
        // fill of the page's bits, made where they are stored, whose form then follows them.
        let changes = match self.stored_block(&at) {
            Some(bits) => block::fill_would_change(bits, a, b, v),
            None => true, // an inline code that outgrows its form has changed
        };
        changes.then_some((at, Content::Fill { a, b, v }))
    }

    /// The slots and blocks carrying out `plan` adds (sparse form; a dense region has a block
    /// for every page).
    #[inline(always)]
    pub(super) fn room(&self, plan: &Plan) -> Room {
        let mut room = Room::default();
        for (at, content) in plan.edges.iter().flatten() {
            let page = self.page_room(at, content);
            room.slots += page.slots;
            room.blocks += page.blocks;
        }
        room
    }

    /// The slots and blocks storing `content` as page `at` adds.
    #[inline(always)]
    pub(super) fn page_room(&self, at: &At, content: &Content) -> Room {
        let new_slot = usize::from(!at.stored.is_mixed());
        match content {
            _ if self.is_dense() => Room::default(),
            Content::Uniform(_) => Room::default(),
            Content::Inline { .. } => Room {
                slots: new_slot,
                blocks: 0,
            },
            // A block or a dense page fills in place; an inline page gets a block.
            Content::Fill { .. } => Room {
                slots: 0,
                blocks: usize::from(matches!(at.stored, Stored::Inline { .. })),
            },
        }
    }

    /// Whether the sparse form holds `room` already.
    #[inline(always)]
    pub(super) fn has(&self, room: Room) -> bool {
        if room == Room::default() {
            return true;
        }
        match &self.leaves {
            Leaves::Sparse { slots, blocks } => {
                slots.capacity() - slots.len() >= room.slots
                    && blocks.capacity() - blocks.len() >= room.blocks
            }
            Leaves::Dense(_) => true,
        }
    }

    /// Makes `room` (and some headroom) in the sparse form.
    pub(super) fn reserve_room(&mut self, room: Room) -> Alloc<()> {
        if let Leaves::Sparse { slots, blocks } = &mut self.leaves {
            if room.slots > 0 {
                grow(slots, room.slots.max(SLOT_HEADROOM), PAGES as usize)?;
            }
            if room.blocks > 0 {
                grow(blocks, room.blocks.max(BLOCK_HEADROOM), PAGES as usize)?;
            }
        }
        Ok(())
    }

    /// Makes sure [`Region::apply`] of `plan` completes without allocating: exactly the slots
    /// and blocks its edge pages will need (and the headroom), so that no region carries room
    /// for blocks it never holds.
    pub(in crate::attrs) fn reserve(&mut self, plan: &Plan) -> Alloc<()> {
        let room = self.room(plan);
        if self.has(room) {
            return Ok(());
        }
        self.reserve_room(room)
    }
}
