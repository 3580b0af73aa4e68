//! [`Dispatcher`]: alarm events delivered in the background, so that a dataflow worker never waits
//! for Slack or a mail server.
//!
//! `send` only counts the event and hands it to a thread running a tokio runtime; there, each
//! (event, handler) pair is a task running [`Courier::deliver`], and the last task of an event
//! reports its outcome. Outcomes go to a second thread that calls the caller's function, so that
//! a slow function (one writing a file) delays reports, not deliveries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use operators::model::{AlarmDelivery, AlarmEvent};
use tokio::sync::{mpsc as channel, Semaphore};
use tokio::task::JoinSet;

use super::config::HandlerSpec;
use super::courier::Courier;
use super::DeliveryPolicy;

/// The error of an event refused because [`DeliveryPolicy::queue`] events are already pending.
pub const QUEUE_FULL: &str = "delivery queue full";
/// The error of each handler still delivering when the dispatcher stopped.
pub const STOPPED: &str = "not delivered: the job stopped";
/// The error of a name in `event.handlers` that is no handler.
pub const UNKNOWN_HANDLER: &str = "unknown handler";

/// Delivers alarm events in the background; see the [module docs](super).
pub struct Dispatcher {
    /// By name; replaced by [`Dispatcher::set_handlers`].
    handlers: Arc<std::sync::RwLock<HashMap<String, Arc<HandlerSpec>>>>,
    commands: Option<channel::UnboundedSender<Command>>,
    /// Where `send` reports the events it refuses.
    refused: Option<mpsc::Sender<AlarmDelivery>>,
    pending: Arc<AtomicUsize>,
    queue: usize,
    runtime: Option<JoinHandle<()>>,
    reporter: Option<JoinHandle<()>>,
}

enum Command {
    Deliver(AlarmEvent),
    /// Stop, waiting this long for what is in flight.
    Stop(Duration),
}

impl Dispatcher {
    /// Starts the delivery and reporting threads with the default [`DeliveryPolicy`].
    ///
    /// `outcomes` is called on a dispatcher-owned thread with finished deliveries, batched: every
    /// event whose handlers have all succeeded or exhausted their retries. Events with no
    /// handlers are not reported.
    pub fn start(
        handlers: Vec<HandlerSpec>,
        outcomes: Box<dyn FnMut(Vec<AlarmDelivery>) + Send>,
    ) -> std::io::Result<Dispatcher> {
        Dispatcher::start_with(handlers, outcomes, DeliveryPolicy::default())
    }

    /// [`Dispatcher::start`] with another backoff, queue bound or concurrency.
    pub fn start_with(
        handlers: Vec<HandlerSpec>,
        mut outcomes: Box<dyn FnMut(Vec<AlarmDelivery>) + Send>,
        policy: DeliveryPolicy,
    ) -> std::io::Result<Dispatcher> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handler_map = Arc::new(std::sync::RwLock::new(by_name(handlers)));
        let courier = Courier::new().map_err(std::io::Error::other)?;
        let (report, reports) = mpsc::channel::<AlarmDelivery>();
        let reporter = std::thread::Builder::new().name("alarm-outcomes".into()).spawn(move || {
            while let Ok(first) = reports.recv() {
                let mut batch = vec![first];
                batch.extend(reports.try_iter());
                outcomes(batch);
            }
        })?;
        let (commands, inbox) = channel::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let delivery = Delivery {
            handlers: handler_map.clone(),
            courier: Arc::new(courier),
            policy,
            permits: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            flights: Arc::new(Mutex::new(HashMap::new())),
            report: report.clone(),
            pending: pending.clone(),
        };
        let runtime = std::thread::Builder::new()
            .name("alarm-delivery".into())
            .spawn(move || runtime.block_on(delivery.run(inbox)))?;
        Ok(Dispatcher {
            handlers: handler_map,
            commands: Some(commands),
            refused: Some(report),
            pending,
            queue: policy.queue,
            runtime: Some(runtime),
            reporter: Some(reporter),
        })
    }

    /// Never blocks: queues the event for each handler named in `event.handlers`. A name that is
    /// no handler fails with [`UNKNOWN_HANDLER`]; when [`DeliveryPolicy::queue`] events are
    /// already pending, the event fails at once with [`QUEUE_FULL`].
    pub fn send(&self, event: AlarmEvent) {
        if event.handlers.is_empty() {
            return;
        }
        let queue = self.queue;
        let admitted = self.pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < queue).then_some(n + 1));
        if admitted.is_err() {
            self.refuse(event, QUEUE_FULL.into());
            return;
        }
        let sent = match &self.commands {
            Some(commands) => commands.send(Command::Deliver(event)).map_err(|e| e.0),
            None => Err(Command::Deliver(event)),
        };
        if let Err(Command::Deliver(event)) = sent {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.refuse(event, "not delivered: the dispatcher has stopped".into());
        }
    }

    fn refuse(&self, event: AlarmEvent, error: String) {
        if let Some(refused) = &self.refused {
            let _ = refused.send(AlarmDelivery { event, delivered: false, error: Some(error) });
        }
    }

    /// Replaces the handlers: events sent from now on are delivered through these. Deliveries in
    /// flight finish with the handler they started with.
    pub fn set_handlers(&self, handlers: Vec<HandlerSpec>) {
        if let Ok(mut known) = self.handlers.write() {
            *known = by_name(handlers);
        }
    }

    /// Events queued or in flight.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Stops accepting events, waits up to `grace` for what is in flight (reporting outcomes),
    /// then reports everything left as failed ([`STOPPED`]) and returns once every outcome has
    /// been handed to `outcomes`.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(Command::Stop(grace));
        }
        if let Some(runtime) = self.runtime.take() {
            let _ = runtime.join();
        }
        // The reporter ends once every sender of outcomes is gone.
        self.refused = None;
        if let Some(reporter) = self.reporter.take() {
            let _ = reporter.join();
        }
    }
}

impl Drop for Dispatcher {
    /// A dispatcher dropped without [`Dispatcher::shutdown`] stops without grace.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// An event being delivered: one result per name in `event.handlers`, `None` while in flight.
struct Flight {
    event: AlarmEvent,
    results: Vec<Option<Result<(), String>>>,
    remaining: usize,
}

impl Flight {
    fn outcome(self) -> AlarmDelivery {
        let failures: Vec<String> = self
            .event
            .handlers
            .iter()
            .zip(self.results)
            .filter_map(|(name, result)| match result {
                Some(Ok(())) => None,
                Some(Err(e)) => Some(format!("{name}: {e}")),
                None => Some(format!("{name}: {STOPPED}")),
            })
            .collect();
        let error = (!failures.is_empty()).then(|| failures.join("; "));
        AlarmDelivery { event: self.event, delivered: error.is_none(), error }
    }
}

/// What the runtime thread owns.
struct Delivery {
    handlers: Arc<std::sync::RwLock<HashMap<String, Arc<HandlerSpec>>>>,
    courier: Arc<Courier>,
    policy: DeliveryPolicy,
    permits: Arc<Semaphore>,
    flights: Arc<Mutex<HashMap<u64, Flight>>>,
    report: mpsc::Sender<AlarmDelivery>,
    pending: Arc<AtomicUsize>,
}

impl Delivery {
    async fn run(self, mut inbox: channel::UnboundedReceiver<Command>) {
        let mut tasks = JoinSet::new();
        let mut next = 0u64;
        let grace = loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(Command::Deliver(event)) => {
                        self.begin(next, event, &mut tasks);
                        next += 1;
                    }
                    Some(Command::Stop(grace)) => break grace,
                    None => break Duration::ZERO,
                },
                // Finished tasks are collected as they end, or the set would keep them all.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        tasks.shutdown().await;
        let unfinished: Vec<Flight> = {
            let mut flights = lock(&self.flights);
            let mut ids: Vec<u64> = flights.keys().copied().collect();
            ids.sort_unstable();
            ids.into_iter().filter_map(|id| flights.remove(&id)).collect()
        };
        for flight in unfinished {
            let _ = self.report.send(flight.outcome());
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Registers the event and starts one task per known handler.
    fn begin(&self, id: u64, event: AlarmEvent, tasks: &mut JoinSet<()>) {
        let handlers: Vec<Option<Arc<HandlerSpec>>> = match self.handlers.read() {
            Ok(known) => event.handlers.iter().map(|name| known.get(name).cloned()).collect(),
            Err(_) => vec![None; event.handlers.len()],
        };
        let results: Vec<_> = handlers.iter().map(|h| h.is_none().then(|| Err(UNKNOWN_HANDLER.to_string()))).collect();
        let remaining = handlers.iter().filter(|h| h.is_some()).count();
        let shared = Arc::new(event.clone());
        lock(&self.flights).insert(id, Flight { event, results, remaining });
        if remaining == 0 {
            self.finish(id);
            return;
        }
        for (index, handler) in handlers.into_iter().enumerate() {
            let Some(handler) = handler else { continue };
            let (courier, permits, policy, event) =
                (self.courier.clone(), self.permits.clone(), self.policy, shared.clone());
            let (flights, report, pending) = (self.flights.clone(), self.report.clone(), self.pending.clone());
            tasks.spawn(async move {
                let result = courier.deliver(&handler, &event, &policy, Some(&permits)).await;
                // Recording the result and reporting happen without an await between them: an
                // abort at shutdown cannot split them.
                let done = {
                    let mut flights = lock(&flights);
                    let Some(flight) = flights.get_mut(&id) else { return };
                    flight.results[index] = Some(result);
                    flight.remaining -= 1;
                    if flight.remaining == 0 {
                        flights.remove(&id)
                    } else {
                        None
                    }
                };
                if let Some(flight) = done {
                    let _ = report.send(flight.outcome());
                    pending.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    }

    fn finish(&self, id: u64) {
        let flight = lock(&self.flights).remove(&id);
        if let Some(flight) = flight {
            let _ = self.report.send(flight.outcome());
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The map of flights; a panic elsewhere while it was held leaves it usable.
fn lock(flights: &Mutex<HashMap<u64, Flight>>) -> MutexGuard<'_, HashMap<u64, Flight>> {
    flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn by_name(handlers: Vec<HandlerSpec>) -> HashMap<String, Arc<HandlerSpec>> {
    handlers.into_iter().map(|h| (h.name.clone(), Arc::new(h))).collect()
}
