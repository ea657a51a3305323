//! Activation memory by liveness. Each step's output takes a free slot (one whose value is no
//! longer read); a slot is freed after the last step that reads its value, never during it, so a
//! step's output never aliases one of its inputs. A stack of residual blocks thus cycles through
//! three slots (block input, hidden activation, block output) whatever its depth.

use crate::plan::{Step, Storage, ValueId};

/// Assigns every value a [`Storage`] and returns it with the width each slot must hold.
pub fn assign_slots(
    steps: &[Step],
    value_widths: &[usize],
    input: ValueId,
    output: ValueId,
) -> (Vec<Storage>, Vec<usize>) {
    // The step after which each value is dead; the output is never dead.
    let mut last_read = vec![None::<usize>; value_widths.len()];
    for (index, step) in steps.iter().enumerate() {
        for value in step.reads() {
            last_read[value.0] = Some(index);
        }
    }
    last_read[output.0] = Some(usize::MAX);

    let mut storage = vec![Storage::Input; value_widths.len()];
    let mut slot_widths: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let width = value_widths[step.output.0];
        // Prefer a free slot already wide enough, then the widest free one (it grows).
        let choice = free
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot_widths[**slot] >= width)
            .min_by_key(|(_, slot)| slot_widths[**slot])
            .or_else(|| {
                free.iter()
                    .enumerate()
                    .max_by_key(|(_, slot)| slot_widths[**slot])
            })
            .map(|(position, _)| position);
        let slot = match choice {
            Some(position) => free.swap_remove(position),
            None => {
                slot_widths.push(0);
                slot_widths.len() - 1
            }
        };
        slot_widths[slot] = slot_widths[slot].max(width);
        storage[step.output.0] = Storage::Slot(slot);

        for value in step.reads().into_iter().chain([step.output]) {
            if value != input
                && last_read[value.0].is_none_or(|last| last == index)
                && let Storage::Slot(dead) = storage[value.0]
                && !free.contains(&dead)
            {
                free.push(dead);
            }
        }
    }
    (storage, slot_widths)
}

#[cfg(test)]
mod tests {
    use crate::graph::synthetic::{MlpShape, mlp};
    use crate::plan::Plan;

    #[test]
    fn activation_memory_is_flat_in_depth() {
        let shallow =
            Plan::new(&mlp(MlpShape::square(32, 4), 1.0, 3).expect("graph")).expect("plan");
        let deep = Plan::new(&mlp(MlpShape::square(32, 64), 1.0, 3).expect("graph")).expect("plan");
        assert_eq!(
            shallow.activation_bytes(100, 4),
            deep.activation_bytes(100, 4)
        );
        assert_eq!(
            deep.slot_widths.len(),
            3,
            "block input, hidden, block output"
        );
    }

    #[test]
    fn no_step_writes_a_slot_it_reads() {
        let shape = MlpShape {
            input_width: 7,
            width: 9,
            hidden_width: 33,
            depth: 5,
            output_width: 3,
            residual: true,
        };
        let plan = Plan::new(&mlp(shape, 1.0, 4).expect("graph")).expect("plan");
        for step in &plan.steps {
            let written = plan.value_storage[step.output.0];
            for read in step.reads() {
                assert_ne!(plan.value_storage[read.0], written, "step {}", step.name);
            }
        }
    }
}
