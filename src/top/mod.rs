//! `geomirror top`: both sites side by side in the terminal, refreshed every
//! second. One task per node polls its admin API (`/status`, `/events`);
//! the terminal loop applies what they bring to the [`Model`] and draws it
//! ([`view::draw`], a pure function of the model, tested without a
//! terminal).

pub mod model;
pub mod view;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use geomirror_wire::status::{EventsPage, NodeStatus};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use tokio::sync::mpsc;

use self::model::Model;
use self::view::UiState;

/// `geomirror top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// A node's admin address; one per site (at most two). Given one, its
    /// peer is shown too if the node knows the peer's admin address
    /// (`[peer] admin` in its config).
    #[arg(long, required = true)]
    pub admin: Vec<SocketAddr>,
    /// Seconds between polls.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

/// One poll's answer: node, when, and what it said.
type Answer = (usize, f64, Result<(NodeStatus, EventsPage), String>);

/// Polls one node forever: its status and the events after the last seen.
async fn poll_node(n: usize, admin: SocketAddr, interval: Duration, start: Instant, tx: mpsc::Sender<Answer>) {
    let client = crate::ops::admin_client(admin);
    let mut since = 0u64;
    loop {
        let answer = async {
            let status: NodeStatus = serde_json::from_value(client.request("GET", "/status", None).await.map_err(|e| e.to_string())?)
                .map_err(|e| format!("an unexpected /status (another version?): {e}"))?;
            // An older node without /events still shows its status.
            let page = match client.request("GET", &format!("/events?since={since}"), None).await {
                Ok(v) => serde_json::from_value::<EventsPage>(v).unwrap_or_default(),
                Err(_) => EventsPage::default(),
            };
            Ok((status, page))
        }
        .await;
        if let Ok((_, page)) = &answer {
            since = since.max(page.last);
        }
        if tx.send((n, start.elapsed().as_secs_f64(), answer)).await.is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Runs the terminal UI until `q`.
pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    if args.admin.len() > 2 {
        bail!("give at most two --admin addresses (one node per site)");
    }
    if !(0.1..=60.0).contains(&args.interval) {
        bail!("--interval must be between 0.1 and 60 seconds");
    }
    let interval = Duration::from_secs_f64(args.interval);
    let mut admins = args.admin.clone();
    if admins.len() == 1 {
        // The node may know its peer's admin address (`[peer] admin`).
        let client = crate::ops::admin_client(admins[0]);
        if let Ok(raw) = client.request("GET", "/status", None).await
            && let Ok(status) = serde_json::from_value::<NodeStatus>(raw)
            && let Some(peer) = status.peer.and_then(|p| p.admin).and_then(|a| a.parse::<SocketAddr>().ok())
        {
            admins.push(peer);
        }
    }
    let start = Instant::now();
    let (tx, rx) = mpsc::channel(16);
    let mut pollers = Vec::new();
    for (n, admin) in admins.iter().enumerate() {
        pollers.push(tokio::spawn(poll_node(n, *admin, interval, start, tx.clone())));
    }
    drop(tx);
    let admins: Vec<String> = admins.iter().map(ToString::to_string).collect();
    let result = tokio::task::spawn_blocking(move || ui_loop(Model::new(&admins), rx)).await.context("the terminal loop")?;
    for p in pollers {
        p.abort();
    }
    result
}

fn ui_loop(mut model: Model, mut rx: mpsc::Receiver<Answer>) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init().context("set up the terminal")?;
    let mut ui = UiState::default();
    let result = (|| -> anyhow::Result<()> {
        loop {
            while let Ok((n, at, answer)) = rx.try_recv() {
                if !ui.paused {
                    model.apply(n, at, answer);
                }
            }
            let volumes = model.nodes.iter().filter_map(|n| n.last.as_ref()).map(|s| s.volumes.len()).max().unwrap_or(1);
            ui.volume = ui.volume.min(volumes.saturating_sub(1));
            terminal.draw(|f| view::draw(f, &model, &ui)).context("draw")?;
            if event::poll(Duration::from_millis(200)).context("read the keyboard")?
                && let Event::Key(key) = event::read().context("read the keyboard")?
                && key.kind == KeyEventKind::Press
            {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('p') | KeyCode::Char(' ') => ui.paused = !ui.paused,
                    KeyCode::Char('?') | KeyCode::Char('h') => ui.help = !ui.help,
                    KeyCode::Right | KeyCode::Tab | KeyCode::Char('l') => ui.volume = (ui.volume + 1) % volumes.max(1),
                    KeyCode::Left | KeyCode::BackTab => ui.volume = (ui.volume + volumes.max(1) - 1) % volumes.max(1),
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use geomirror_wire::status::{EventRecord, NodeEvent, ResyncStatus};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::console::tests::sample;

    fn screen(model: &Model, ui: &UiState, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| view::draw(f, model, ui)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height).map(|y| (0..width).map(|x| buffer[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect()
    }

    fn b_of(mut s: NodeStatus) -> NodeStatus {
        s.name = "site-b".into();
        s.peer.as_mut().unwrap().name = "site-a".into();
        s
    }

    fn page(events: Vec<NodeEvent>) -> EventsPage {
        let events: Vec<EventRecord> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| EventRecord { seq: i as u64 + 1, unix_ms: 3_600_000 + i as u64 * 1000, volume: None, event })
            .collect();
        EventsPage { last: events.len() as u64, events, missed: 0 }
    }

    /// Two healthy sites, polled twice one second apart (site A wrote 500 times meanwhile).
    fn healthy() -> Model {
        let mut m = Model::new(&["127.0.0.1:9090".into(), "127.0.0.1:9091".into()]);
        let a = sample("sync");
        m.apply(0, 1.0, Ok((a.clone(), page(vec![NodeEvent::LinkUp]))));
        m.apply(1, 1.0, Ok((b_of(a.clone()), EventsPage::default())));
        let mut a2 = a.clone();
        a2.volumes[0].writes_total += 500;
        a2.volumes[0].write_bytes_total += 500 * 4096;
        a2.volumes[0].replication.as_mut().unwrap().copy_sent_bytes_total += 1 << 20;
        a2.peer.as_mut().unwrap().sent_bytes_total += 2 << 20;
        a2.volumes[0].replication.as_mut().unwrap().claim_round_trips += 2;
        m.apply(0, 2.0, Ok((a2, EventsPage::default())));
        m
    }

    #[test]
    fn a_healthy_pair_shows_both_sites_their_figures_and_rates() {
        let text = screen(&healthy(), &UiState::default(), 180, 40);
        for want in [
            "site-a",
            "site-b",
            "connected",
            "rtt 20.4 ms",
            "volume vol0 (1/1)",
            "sync · serving",
            "owned 12/1024 extents · exposed 12.0 MiB",
            "not durable at peer 3.0 MiB (oldest 0.2s)",
            "host writes 500/s 2.0 MiB/s",
            "copying 1.0 MiB/s",
            "sending 2.0 MiB/s",
            "claims 2.0/s",
            "01:00:00 site-a peer link up",
            "q quit",
        ] {
            assert!(text.contains(want), "missing `{want}`:\n{text}");
        }
    }

    #[test]
    fn catching_up_and_a_lost_peer_show_the_health_the_reason_and_the_event() {
        let mut m = healthy();
        let mut a = m.nodes[0].last.clone().unwrap();
        let st = a.standing.as_mut().unwrap();
        st.health = "catching-up".into();
        st.reason = "resyncing 3 extents with the peer".into();
        a.volumes[0].replication.as_mut().unwrap().resync = Some(ResyncStatus {
            bytes_done: 1 << 20,
            bytes_total: 4 << 20,
            blocks_differing: 7,
            blocks_saved: 0,
            rate_bytes_per_second: 1e6,
            eta_seconds: Some(3.0),
        });
        m.apply(0, 3.0, Ok((a.clone(), EventsPage::default())));
        let text = screen(&m, &UiState::default(), 140, 40);
        assert!(text.contains("catching-up") && text.contains("resyncing 3 extents"), "{text}");
        assert!(text.contains("resync 1.0 MiB of 4.0 MiB, ETA 3.0s"), "{text}");

        let st = a.standing.as_mut().unwrap();
        st.health = "peer-lost".into();
        st.reason = "the peer did not answer a heartbeat within 1.5s".into();
        a.peer.as_mut().unwrap().link = "down".into();
        let mut events = page(vec![NodeEvent::LinkDown { reason: "the peer did not answer a heartbeat within 1.5s".into() }]);
        events.events[0].seq = 2;
        events.last = 2;
        m.apply(0, 4.0, Ok((a, events)));
        let text = screen(&m, &UiState::default(), 140, 40);
        assert!(text.contains("peer-lost") && text.contains("link down"), "{text}");
        assert!(text.contains("peer link down: the peer did not answer"), "{text}");
    }

    #[test]
    fn an_unreachable_node_keeps_its_last_figures_greyed_and_says_so() {
        let mut m = healthy();
        m.apply(1, 3.0, Err("no answer from the control API at 127.0.0.1:9091 within 5s".into()));
        let text = screen(&m, &UiState::default(), 140, 40);
        assert!(text.contains("site-b UNREACHABLE (last known figures)"), "{text}");
        assert!(text.contains("not answering: no answer from the control API"), "{text}");
        assert!(text.contains("owned 12/1024"), "the last figures stay: {text}");
        let never = Model::new(&["127.0.0.1:9999".into()]);
        let mut never = never;
        never.apply(0, 1.0, Err("connection refused".into()));
        assert!(screen(&never, &UiState::default(), 80, 24).contains("UNREACHABLE: connection refused"));
    }

    #[test]
    fn a_narrow_terminal_stacks_the_sites_and_help_and_pause_show() {
        let ui = UiState { paused: true, help: true, volume: 0 };
        let text = screen(&healthy(), &ui, 60, 50);
        let a = text.find("site-a").expect("site A shown");
        let b = text.find("site-b").expect("site B shown");
        assert!(text[..b].lines().count() > text[..a].lines().count(), "stacked: B below A\n{text}");
        assert!(text.contains("[paused]") && text.contains(" help "), "{text}");
        // A tiny terminal draws without panicking.
        screen(&healthy(), &UiState::default(), 20, 6);
    }
}
