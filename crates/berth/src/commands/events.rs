//! `events` (and `system events`): the store's event log, past and live, filtered and formatted as
//! Docker's.

use std::time::Duration;

use anyhow::Context;
use berth_runtime::events::{self, Event, Follower};
use berth_runtime::Engine;
use clap::Args;
use serde_json::{json, Value};

use crate::format::Template;

// `events` flags.
#[derive(Args)]
pub struct EventsArgs {
    /// Show all events created since timestamp
    #[arg(long, allow_hyphen_values = true)]
    since: Option<String>,
    /// Stream events until this timestamp
    #[arg(long, allow_hyphen_values = true)]
    until: Option<String>,
    /// Filter output based on conditions provided (container, event, type, image, label, volume, network)
    #[arg(short = 'f', long, allow_hyphen_values = true)]
    filter: Vec<String>,
    /// Format the output using the given Go template
    #[arg(long, allow_hyphen_values = true)]
    format: Option<String>,
}

/// How often a live stream looks for new events.
const POLL: Duration = Duration::from_millis(100);

/// Prints the events from `--since` (else from now) until `--until` (else until interrupted).
pub fn events(engine: &Engine, args: EventsArgs) -> anyhow::Result<i32> {
    let since = args
        .since
        .as_deref()
        .map(super::container::parse_time_bound)
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(super::container::parse_time_bound)
        .transpose()?;
    let filters = args
        .filter
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("bad format of filter (expected name=value): {f}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (key, _) in &filters {
        if !matches!(
            key.as_str(),
            "container" | "event" | "type" | "image" | "label" | "volume" | "network"
        ) {
            anyhow::bail!("invalid filter '{key}'");
        }
    }
    let template = match args.format.as_deref() {
        Some("json") | None => None,
        Some(f) => Some(Template::parse(f)?),
    };
    let json = args.format.as_deref() == Some("json");
    let print = |event: &Event| -> anyhow::Result<()> {
        if !filters.iter().all(|(k, v)| matches(event, k, v)) {
            return Ok(());
        }
        match &template {
            Some(t) => println!("{}", t.render(&template_value(event))?),
            None if json => println!("{}", serde_json::to_string(event)?),
            None => println!("{}", event.line()),
        }
        Ok(())
    };
    let in_range = |event: &Event| {
        since.is_none_or(|s| event.time_nano >= s.timestamp_nanos_opt().unwrap_or(0))
            && until.is_none_or(|u| event.time_nano <= u.timestamp_nanos_opt().unwrap_or(i64::MAX))
    };
    let root = engine.store().root().to_path_buf();
    // Followed from here on, so nothing logged while the past is read is missed or printed twice.
    let mut follower = Follower::new(&root);
    if since.is_some() {
        for event in events::read_all(&root).iter().filter(|e| in_range(e)) {
            print(event)?;
        }
    }
    let now = chrono::Utc::now();
    if until.is_some_and(|u| u <= now) {
        return Ok(0);
    }
    loop {
        for event in follower.poll().iter().filter(|e| in_range(e)) {
            print(event)?;
        }
        if until.is_some_and(|u| chrono::Utc::now() > u) {
            return Ok(0);
        }
        std::thread::sleep(POLL);
    }
}

/// Docker's filters: each key matches its own part of the event.
fn matches(event: &Event, key: &str, value: &str) -> bool {
    let attribute = |name: &str| event.actor.attributes.get(name).map(String::as_str);
    match key {
        "type" => event.kind == value,
        "event" => event.action == value || event.action.split(':').next() == Some(value),
        "container" => {
            event.kind == "container"
                && (event.actor.id.starts_with(value) || attribute("name") == Some(value))
        }
        "image" => {
            event.from == value
                || attribute("image") == Some(value)
                || (event.kind == "image"
                    && (event.actor.id == value || attribute("name") == Some(value)))
        }
        "volume" | "network" => {
            event.kind == key && (event.actor.id == value || attribute("name") == Some(value))
        }
        "label" => match value.split_once('=') {
            Some((k, v)) => attribute(k) == Some(v),
            None => attribute(value).is_some(),
        },
        _ => false,
    }
}

/// The event with the Go field names a `--format` template uses (`.Type`, `.Action`, `.Actor.ID`,
/// `.Status`, `.ID`, `.From`, `.Time`, `.TimeNano`, `.Scope`).
fn template_value(event: &Event) -> Value {
    json!({
        "Status": event.status,
        "ID": event.id,
        "From": event.from,
        "Type": event.kind,
        "Action": event.action,
        "Actor": {"ID": event.actor.id, "Attributes": event.actor.attributes},
        "Scope": event.scope,
        "Time": event.time,
        "TimeNano": event.time_nano,
    })
}
