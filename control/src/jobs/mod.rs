//! The jobs this instance runs (it runs jobs only while it holds the job
//! lock): their tasks, their live progress, and the operator settings the
//! backfill reads before every chunk. The job's record lives in the
//! migration's state; this is the holder's working copy.

mod backfill;
mod reprove;
mod run;
mod target;
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard_rules::migration::{JobKind, Progress, Settings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ControlError;

/// How a job task ended, for whoever waits on it.
pub(crate) type Ended = watch::Receiver<Option<Arc<Result<(), ControlError>>>>;

pub(crate) use backfill::backfill;
pub(crate) use target::{Direction, Target};
pub(crate) use verify::verify;

/// What a running job shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shown {
    pub progress: Progress,
    pub paused: bool,
}

/// A job's handle on what it shows.
#[derive(Clone, Default)]
pub(crate) struct Reporter(Arc<Mutex<Shown>>);

impl Reporter {
    /// Progress, and whether the operator holds the job.
    pub(crate) fn report(&self, progress: &Progress, paused: bool) {
        let mut shown = self.0.lock().unwrap_or_else(|e| e.into_inner());
        shown.progress = progress.clone();
        shown.paused = paused;
    }

    /// What the job waits for (`None`: nothing).
    pub(crate) fn waiting(&self, why: Option<String>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .progress
            .throttled = why;
    }

    pub(crate) fn shown(&self) -> Shown {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Task {
    id: u64,
    kind: JobKind,
    handle: JoinHandle<()>,
    reporter: Reporter,
    ended: Ended,
}

/// The job tasks of this instance, by migration.
#[derive(Default)]
pub(crate) struct JobRunner {
    tasks: Mutex<HashMap<String, Task>>,
    settings: Mutex<HashMap<String, Settings>>,
}

impl JobRunner {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts job `id` of `migration` with `start` (given a reporter and
    /// the sender of its end) unless a task of that job already runs here.
    /// A task of an earlier job is left to finish (it may be recording its
    /// end); one that must stop is stopped with [`JobRunner::abort`] first.
    /// Returns how the job ends.
    pub(crate) fn start(
        &self,
        migration: &str,
        id: u64,
        kind: JobKind,
        start: impl FnOnce(
            Reporter,
            watch::Sender<Option<Arc<Result<(), ControlError>>>>,
        ) -> JoinHandle<()>,
    ) -> Ended {
        let mut tasks = self.tasks();
        if let Some(t) = tasks.get(migration) {
            if t.id == id && !t.handle.is_finished() {
                return t.ended.clone();
            }
        }
        let reporter = Reporter::default();
        let (done, ended) = watch::channel(None);
        let handle = start(reporter.clone(), done);
        let task = Task {
            id,
            kind,
            handle,
            reporter,
            ended: ended.clone(),
        };
        tasks.insert(migration.to_owned(), task);
        ended
    }

    /// The job running here for `migration`: its id and kind.
    pub(crate) fn running(&self, migration: &str) -> Option<(u64, JobKind)> {
        self.tasks()
            .get(migration)
            .filter(|t| !t.handle.is_finished())
            .map(|t| (t.id, t.kind))
    }

    /// What the job of `migration` shows here, if it runs here.
    pub(crate) fn shown(&self, migration: &str) -> Option<(u64, Shown)> {
        self.tasks()
            .get(migration)
            .filter(|t| !t.handle.is_finished())
            .map(|t| (t.id, t.reporter.shown()))
    }

    /// Every running job's id and what it shows.
    pub(crate) fn all_shown(&self) -> Vec<(String, u64, Shown)> {
        self.tasks()
            .iter()
            .filter(|(_, t)| !t.handle.is_finished())
            .map(|(m, t)| (m.clone(), t.id, t.reporter.shown()))
            .collect()
    }

    /// Stops the job task of `migration` (a rollback cancels it).
    pub(crate) fn abort(&self, migration: &str) {
        if let Some(t) = self.tasks().remove(migration) {
            t.handle.abort();
        }
    }

    /// Stops every job (shutdown, or the job lock lost); the next holder
    /// resumes them from their records.
    pub(crate) fn stop_all(&self) {
        for (_, t) in self.tasks().drain() {
            t.handle.abort();
        }
    }

    /// The operator settings of `migration`'s backfill.
    pub(crate) fn settings(&self, migration: &str) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(migration)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn set_settings(&self, migration: &str, settings: Settings) {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(migration.to_owned(), settings);
    }
}
