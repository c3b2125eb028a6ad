//! Dropping [`Value`]s without recursion.

use std::rc::Rc;

use super::Value;

/// Drops nested values with a work list instead of recursion, so a deeply nested value (which
/// [`MAX_DEPTH`](super::MAX_DEPTH) refuses, or which APPEND/SETITEM on memoised containers
/// can still build) never overflows the stack when it goes away.
impl Drop for Value {
    fn drop(&mut self) {
        let mut work: Vec<Value> = Vec::new();
        take_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_children(&mut v, &mut work);
            // `v` drops here with no children left.
        }
    }
}

/// Moves the elements of a container that is about to be freed (its last reference) into `work`.
fn take_children(v: &mut Value, work: &mut Vec<Value>) {
    match v {
        Value::Tuple(t) => {
            if let Some(items) = Rc::get_mut(t) {
                work.extend(items.iter_mut().map(|x| std::mem::replace(x, Value::None)));
            }
        }
        Value::List(l) => {
            if let Some(cell) = Rc::get_mut(l) {
                work.append(cell.get_mut());
            }
        }
        Value::Dict(d) => {
            if let Some(cell) = Rc::get_mut(d) {
                for (k, v) in cell.get_mut().entries.drain(..) {
                    work.push(k);
                    work.push(v);
                }
            }
        }
        _ => {}
    }
}
