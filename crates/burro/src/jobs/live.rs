//! Coalesced live state of running jobs.
//!
//! Progress and heartbeats change many times a second, so they are kept in
//! memory and written to the store in one batch per flush interval: the
//! store gets at most one write per job per interval, never one per message.
//! Reads of a running job overlay the in-memory values, so callers see the
//! latest progress before it is flushed.

use crate::store::{LiveUpdate, ProcessState, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often coalesced updates are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// The latest live values of one running job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveValues {
    pub progress_percent: Option<f64>,
    pub progress_message: Option<String>,
    pub last_heartbeat: Option<i64>,
    pub process_state: Option<ProcessState>,
    pub pid: Option<i64>,
}

#[derive(Default)]
struct State {
    /// The last flush failed.
    failing: bool,
    current: HashMap<String, LiveValues>,
    dirty: HashMap<String, LiveUpdate>,
    /// Last values of attempts whose end is being written or was written
    /// shortly before, by job id.
    finishing: HashMap<String, Finishing>,
}

/// The last values of one attempt whose end is being written.
struct Finishing {
    attempt: u32,
    values: LiveValues,
    /// Flushes since the end was written; `None` while it is being written.
    flushes: Option<u8>,
}

/// Shared coalescer; cheap to clone.
#[derive(Clone, Default)]
pub struct Live {
    state: Arc<Mutex<State>>,
}

impl Live {
    fn update(&self, id: &str, apply: impl Fn(&mut LiveValues, &mut LiveUpdate)) {
        let mut guard = self.state.lock().expect("live state lock");
        let state = &mut *guard;
        // A running job is nearly always present in both maps: one lookup
        // in each, by reference, and no allocation.
        if let (Some(values), Some(update)) = (state.current.get_mut(id), state.dirty.get_mut(id)) {
            apply(values, update);
            return;
        }
        if !state.current.contains_key(id) {
            state.current.insert(id.to_string(), LiveValues::default());
        }
        if !state.dirty.contains_key(id) {
            state.dirty.insert(
                id.to_string(),
                LiveUpdate {
                    id: id.to_string(),
                    progress_percent: None,
                    progress_message: None,
                    last_heartbeat: None,
                    process_state: None,
                    pid: None,
                },
            );
        }
        let values = state.current.get_mut(id).expect("inserted above");
        let update = state.dirty.get_mut(id).expect("inserted above");
        apply(values, update);
    }

    /// Records progress.
    pub fn progress(&self, id: &str, percent: f64, message: Option<&str>) {
        self.update(id, |values, update| set_progress(values, update, percent, message));
    }

    /// Records progress that arrived at `now_ms`: [`Live::progress`] and
    /// [`Live::heartbeat`] in one update.
    pub fn progress_at(&self, id: &str, now_ms: i64, percent: f64, message: Option<&str>) {
        self.update(id, |values, update| {
            values.last_heartbeat = Some(now_ms);
            update.last_heartbeat = Some(now_ms);
            set_progress(values, update, percent, message);
        });
    }

    /// Records that a message arrived at `now_ms`.
    pub fn heartbeat(&self, id: &str, now_ms: i64) {
        self.update(id, |values, update| {
            values.last_heartbeat = Some(now_ms);
            update.last_heartbeat = Some(now_ms);
        });
    }

    /// Records the process state.
    pub fn process_state(&self, id: &str, state: ProcessState) {
        self.update(id, |values, update| {
            values.process_state = Some(state);
            update.process_state = Some(state);
        });
    }

    /// Records the job's pid. The flush writes it with the other values,
    /// instead of a write of its own for every job.
    pub fn pid(&self, id: &str, pid: Option<i64>) {
        self.update(id, |values, update| {
            values.pid = pid;
            update.pid = pid;
        });
    }

    /// Returns the live values of a running job.
    pub fn get(&self, id: &str) -> Option<LiveValues> {
        self.state.lock().expect("live state lock").current.get(id).cloned()
    }

    /// Returns the live values of attempt `attempt` of a job: those of the
    /// running attempt, or those of that attempt while its end is being
    /// written. A next attempt that the same write claimed has none until
    /// it reports its own.
    pub fn get_attempt(&self, id: &str, attempt: u32) -> Option<LiveValues> {
        let state = self.state.lock().expect("live state lock");
        if let Some(values) = state.current.get(id) {
            return Some(values.clone());
        }
        match state.finishing.get(id) {
            Some(finishing) if finishing.attempt == attempt => Some(finishing.values.clone()),
            _ => None,
        }
    }

    /// Starts the end of attempt `attempt`: returns its last values and
    /// keeps them for reads of that attempt, so that a read before the final
    /// write lands does not fall back to the last flushed progress. Its
    /// pending update is dropped because the final write carries the same
    /// values. Values of a next attempt go to the running set as usual.
    pub fn finish(&self, id: &str, attempt: u32) -> LiveValues {
        let mut state = self.state.lock().expect("live state lock");
        state.dirty.remove(id);
        let values = state.current.remove(id).unwrap_or_default();
        let finishing = Finishing {
            attempt,
            values: values.clone(),
            flushes: None,
        };
        state.finishing.insert(id.to_string(), finishing);
        values
    }

    /// Records that the end of attempt `attempt` is written. Its values
    /// stay readable for one to two more flush intervals: a read may have
    /// fetched the row, still `running`, just before the end landed.
    pub fn finished(&self, id: &str, attempt: u32) {
        let mut state = self.state.lock().expect("live state lock");
        if let Some(finishing) = state.finishing.get_mut(id) {
            if finishing.attempt == attempt {
                finishing.flushes = Some(0);
            }
        }
    }

    /// Forgets a job that finished, returning its last values. Its pending
    /// update is dropped because the final write carries the same values.
    pub fn remove(&self, id: &str) -> Option<LiveValues> {
        let mut state = self.state.lock().expect("live state lock");
        state.dirty.remove(id);
        state.current.remove(id)
    }

    /// Takes the pending updates. Also drops the values of attempts whose
    /// end was written before the previous call.
    pub fn take_dirty(&self) -> Vec<LiveUpdate> {
        let mut state = self.state.lock().expect("live state lock");
        state.finishing.retain(|_, finishing| match &mut finishing.flushes {
            None => true,
            Some(flushes) => {
                *flushes += 1;
                *flushes < 2
            }
        });
        state.dirty.drain().map(|(_, update)| update).collect()
    }

    /// Writes pending updates to the store; with `node_id`, only to jobs
    /// that node still owns. A failure is logged when writing starts to
    /// fail and when it works again, not at every flush.
    pub async fn flush(&self, store: &dyn Store, node_id: Option<&str>) {
        let updates = self.take_dirty();
        if updates.is_empty() {
            return;
        }
        match store.jobs_live_flush(node_id, &updates).await {
            Ok(()) => {
                let mut state = self.state.lock().expect("live state lock");
                if state.failing {
                    state.failing = false;
                    tracing::info!("writing job progress works again");
                }
            }
            Err(err) => {
                let mut state = self.state.lock().expect("live state lock");
                if !state.failing {
                    state.failing = true;
                    tracing::warn!(error = %err, count = updates.len(), "writing job progress failed; retrying at every flush");
                }
                for update in updates {
                    // Newer values recorded meanwhile win over the failed batch.
                    state.dirty.entry(update.id.clone()).or_insert(update);
                }
            }
        }
    }
}

/// Sets the progress in both the live values and the pending update.
fn set_progress(values: &mut LiveValues, update: &mut LiveUpdate, percent: f64, message: Option<&str>) {
    values.progress_percent = Some(percent);
    update.progress_percent = Some(percent);
    if let Some(message) = message {
        values.progress_message = Some(message.to_string());
        update.progress_message = Some(message.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_to_one_update_per_job() {
        let live = Live::default();
        for i in 0..100 {
            live.progress("a", f64::from(i), Some(&format!("step {i}")));
            live.heartbeat("a", i64::from(i));
        }
        live.progress("b", 5.0, None);
        let mut dirty = live.take_dirty();
        dirty.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(dirty.len(), 2);
        assert_eq!(dirty[0].progress_percent, Some(99.0));
        assert_eq!(dirty[0].progress_message.as_deref(), Some("step 99"));
        assert_eq!(dirty[0].last_heartbeat, Some(99));
        assert!(live.take_dirty().is_empty());
        assert_eq!(live.get("a").unwrap().progress_percent, Some(99.0));
    }

    #[test]
    fn progress_at_records_heartbeat_too() {
        let live = Live::default();
        live.progress_at("a", 7, 40.0, Some("half"));
        live.progress_at("a", 9, 50.0, None);
        let values = live.get("a").unwrap();
        assert_eq!(values.last_heartbeat, Some(9));
        assert_eq!(values.progress_percent, Some(50.0));
        assert_eq!(values.progress_message.as_deref(), Some("half"));
        let dirty = live.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].last_heartbeat, Some(9));
        assert_eq!(dirty[0].progress_percent, Some(50.0));
        assert_eq!(dirty[0].progress_message.as_deref(), Some("half"));
    }

    #[test]
    fn finishing_values_stay_readable_until_written() {
        let live = Live::default();
        live.progress("a", 90.0, Some("almost"));
        let last = live.finish("a", 1);
        assert_eq!(last.progress_percent, Some(90.0));
        assert!(live.take_dirty().is_empty(), "the final write carries the values");
        let read = live.get_attempt("a", 1).unwrap();
        assert_eq!(read.progress_message.as_deref(), Some("almost"), "read while the end is written");
        // The same write may claim the job's next attempt, which has no
        // values of its own yet.
        assert_eq!(live.get_attempt("a", 2), None, "a next attempt never shows the last one's progress");
        live.progress("a", 5.0, None);
        assert_eq!(live.get_attempt("a", 2).unwrap().progress_percent, Some(5.0));
        live.finished("a", 1);
        assert_eq!(live.get_attempt("a", 2).unwrap().progress_percent, Some(5.0), "the next attempt keeps its values");
        live.remove("a");
        assert_eq!(live.get_attempt("a", 2), None);
        assert_eq!(live.finish("b", 1), LiveValues::default());
        live.finished("b", 1);
        assert_eq!(live.get_attempt("b", 1), Some(LiveValues::default()));
    }

    #[test]
    fn written_ends_are_forgotten_after_two_flushes() {
        let live = Live::default();
        live.progress("a", 70.0, None);
        live.finish("a", 3);
        live.take_dirty();
        live.take_dirty();
        assert!(live.get_attempt("a", 3).is_some(), "kept while the end is being written");
        live.finished("a", 2);
        live.take_dirty();
        live.take_dirty();
        assert!(live.get_attempt("a", 3).is_some(), "another attempt's write does not end it");
        live.finished("a", 3);
        live.take_dirty();
        assert_eq!(live.get_attempt("a", 3).unwrap().progress_percent, Some(70.0), "kept for one flush after the write");
        live.take_dirty();
        assert_eq!(live.get_attempt("a", 3), None, "forgotten at the second flush");
    }
}
