//! How `geomirror top` draws its [`Model`]: a pure function of the model
//! and the UI state, so it is tested with ratatui's `TestBackend`.
//!
//! Layout: the nodes side by side (stacked on a terminal narrower than
//! [`SIDE_BY_SIDE_MIN_WIDTH`]), each with its health, link, and the
//! selected volume's figures and sparklines; the recent events of all
//! nodes below; a help line at the bottom.

use chrono_free::clock;
use geomirror_wire::status::{NodeEvent, NodeStatus};
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Sparkline, Wrap};

use super::model::{Model, NodeView};
use crate::console::{bytes, duration};

/// Narrower than this, the nodes are stacked.
pub const SIDE_BY_SIDE_MIN_WIDTH: u16 = 100;

/// What the user chose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UiState {
    /// The volume shown (index in each node's list).
    pub volume: usize,
    /// Polling paused: the figures stay.
    pub paused: bool,
    /// The help panel instead of the events.
    pub help: bool,
}

/// Draws everything.
pub fn draw(frame: &mut Frame<'_>, model: &Model, ui: &UiState) {
    let area = frame.area();
    let [nodes_area, events_area, help_area] =
        Layout::vertical([Constraint::Min(10), Constraint::Length(8.min(area.height / 3)), Constraint::Length(1)]).areas(area);
    let direction = if area.width >= SIDE_BY_SIDE_MIN_WIDTH { Direction::Horizontal } else { Direction::Vertical };
    let n = model.nodes.len().max(1) as u32;
    let columns = Layout::default().direction(direction).constraints(vec![Constraint::Ratio(1, n); n as usize]).split(nodes_area);
    for (node, area) in model.nodes.iter().zip(columns.iter()) {
        draw_node(frame, *area, node, ui);
    }
    if ui.help {
        draw_help(frame, events_area);
    } else {
        draw_events(frame, events_area, model);
    }
    let paused = if ui.paused { "  [paused]" } else { "" };
    let line = format!("q quit · p pause · ←/→ volume · ? help{paused}");
    frame.render_widget(Paragraph::new(line).style(Style::default().add_modifier(Modifier::REVERSED)), help_area);
}

fn health_color(health: &str) -> Color {
    match health {
        "connected" | "single site" => Color::Green,
        "catching-up" | "resyncing" | "survivor" => Color::Yellow,
        _ => Color::Red,
    }
}

fn draw_node(frame: &mut Frame<'_>, area: Rect, node: &NodeView, ui: &UiState) {
    let Some(s) = &node.last else {
        let why = node.error.clone().unwrap_or_else(|| "asking…".into());
        let block = Block::default().borders(Borders::ALL).title(format!(" {} ", node.admin));
        frame.render_widget(Paragraph::new(format!("UNREACHABLE: {why}")).wrap(Wrap { trim: true }).block(block), area);
        return;
    };
    let reachable = node.reachable();
    let health = s.standing.as_ref().map_or("single site".to_string(), |st| st.health.clone());
    let grey = Style::default().fg(Color::DarkGray);
    let title = if reachable {
        Line::from(vec![
            Span::styled(format!(" {} ", s.name), Style::default().add_modifier(Modifier::BOLD)),
            Span::styled(format!("{health} "), Style::default().fg(health_color(&health))),
        ])
    } else {
        Line::from(Span::styled(format!(" {} UNREACHABLE (last known figures) ", s.name), Style::default().fg(Color::Red)))
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [text_area, lag_area, claims_area, resync_area] =
        Layout::vertical([Constraint::Min(6), Constraint::Length(2), Constraint::Length(2), Constraint::Length(1)]).areas(inner);
    let mut lines = node_lines(s, node, ui);
    if let Some(e) = node.error.as_ref().filter(|_| !reachable) {
        lines.insert(0, Line::from(format!("not answering: {e}")));
    }
    let text = Paragraph::new(lines).wrap(Wrap { trim: true });
    frame.render_widget(if reachable { text } else { text.style(grey) }, text_area);
    let Some(h) = node.history.get(ui.volume) else { return };
    let lag: Vec<u64> = h.lag_bytes.iter().copied().collect();
    let claims: Vec<u64> = h.claims_milli.iter().copied().collect();
    let tail = |v: &[u64], width: u16| v[v.len().saturating_sub(width as usize)..].to_vec();
    let lag_now = lag.last().copied().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(Block::default().title(format!("lag (not durable at the peer) {}", bytes(lag_now))))
            .data(tail(&lag, lag_area.width)),
        lag_area,
    );
    let claim_rate = node.rates.get(ui.volume).map_or(0.0, |r| r.claims);
    frame.render_widget(
        Sparkline::default()
            .block(Block::default().title(format!("claim round trips {claim_rate:.1}/s")))
            .data(tail(&claims, claims_area.width)),
        claims_area,
    );
    if let Some(rs) = s.volumes.get(ui.volume).and_then(|v| v.replication.as_ref()).and_then(|r| r.resync.as_ref()) {
        let ratio = if rs.bytes_total == 0 { 1.0 } else { (rs.bytes_done as f64 / rs.bytes_total as f64).clamp(0.0, 1.0) };
        let eta = rs.eta_seconds.map_or(String::new(), |e| format!(", ETA {}", duration(e)));
        let label = format!("resync {} of {}{eta}", bytes(rs.bytes_done), bytes(rs.bytes_total));
        frame.render_widget(Gauge::default().ratio(ratio).label(label).gauge_style(Style::default().fg(Color::Yellow)), resync_area);
    }
}

fn node_lines<'a>(s: &NodeStatus, node: &NodeView, ui: &UiState) -> Vec<Line<'a>> {
    let mut lines = Vec::new();
    let mut first = format!("up {} · v{}", duration(s.uptime_seconds), s.version);
    if let Some(p) = &s.peer {
        let rtt = p.rtt_ms.map_or(String::new(), |r| format!(" · rtt {r:.1} ms"));
        first = format!(
            "peer {} link {} {}{rtt} · sending {}/s · {first}",
            p.name,
            p.link,
            duration(p.since_seconds),
            bytes(node.link_bytes_per_second as u64)
        );
    }
    lines.push(Line::from(first));
    if let Some(st) = &s.standing {
        let witness = st.witness.as_ref().map_or(String::new(), |w| format!(" · witness {w}"));
        lines.push(Line::from(format!("{}{witness}", st.reason)));
    }
    let count = s.volumes.len();
    let Some(v) = s.volumes.get(ui.volume) else {
        lines.push(Line::from("no such volume"));
        return lines;
    };
    let rates = node.rates.get(ui.volume).copied().unwrap_or_default();
    let mode = crate::console::mode_of(v);
    let serving = if v.serving { "serving" } else { "NOT SERVING" };
    lines.push(Line::from(Span::styled(
        format!("volume {} ({}/{count}) · {} · {mode} · {serving}", v.name, ui.volume + 1, bytes(v.size_bytes)),
        Style::default().add_modifier(Modifier::BOLD),
    )));
    lines.push(Line::from(format!(
        "host writes {:.0}/s {}/s · reads {:.0}/s {}/s",
        rates.writes,
        bytes(rates.write_bytes as u64),
        rates.reads,
        bytes(rates.read_bytes as u64)
    )));
    if let Some(r) = &v.replication {
        let limit = if r.max_owned_extents > 0 { format!("/{}", r.max_owned_extents) } else { String::new() };
        lines.push(Line::from(format!(
            "owned {}{limit} extents · exposed {} · peer owns {}",
            r.owned_extents,
            bytes(r.owned_extents * u64::from(v.extent_bytes)),
            r.peer_owned_extents
        )));
        let age = |s: Option<f64>| s.map_or(String::new(), |s| format!(" (oldest {})", duration(s)));
        lines.push(Line::from(format!(
            "unsent {}{} · not durable at peer {}{} · copying {}/s",
            bytes(r.unsent_bytes),
            age(r.oldest_unsent_seconds),
            bytes(r.not_durable_at_peer_bytes),
            age(r.oldest_not_durable_seconds),
            bytes(rates.copy_bytes as u64)
        )));
        lines.push(Line::from(format!("claims {:.1}/s · pulls {:.1}/s · handovers {:.1}/s", rates.claims, rates.pulls, rates.handovers)));
        if let Some(d) = r.degraded_seconds {
            lines.push(Line::from(Span::styled(format!("DEGRADED for {}", duration(d)), Style::default().fg(Color::Red))));
        }
        if let Some(p) = &r.problem {
            lines.push(Line::from(Span::styled(p.clone(), Style::default().fg(Color::Red))));
        }
    }
    lines
}

fn draw_events(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let missed: u64 = model.nodes.iter().map(|n| n.events_missed).sum();
    let title = if missed > 0 { format!(" events ({missed} missed) ") } else { " events ".to_string() };
    let lines: Vec<Line<'_>> = model
        .recent_events()
        .into_iter()
        .take(area.height.saturating_sub(2) as usize)
        .map(|(node, e)| {
            let volume = e.volume.as_ref().map_or(String::new(), |v| format!(" {v}"));
            Line::from(format!("{} {node}{volume} {}", clock(e.unix_ms), describe(&e.event)))
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)), area);
}

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let text = "exposed: data only this site holds if it died now (owned extents × extent size) · unsent / not durable: \
                the copy stream's backlog · lag: bytes not yet durable at the peer · claims/s: writes that paid a WAN \
                round trip · a node that does not answer keeps its last figures, greyed";
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).block(Block::default().borders(Borders::ALL).title(" help ")), area);
}

/// One line for an event.
pub fn describe(e: &NodeEvent) -> String {
    match e {
        NodeEvent::LinkUp => "peer link up".into(),
        NodeEvent::LinkDown { reason } => format!("peer link down: {reason}"),
        NodeEvent::VolumeServing => "volume served".into(),
        NodeEvent::VolumeNotServed { reason } => format!("volume not served: {reason}"),
        NodeEvent::VolumeStopped { reason } => format!("volume STOPPED: {reason}"),
        NodeEvent::StoreFault { doing, fault } => format!("store fault {doing}: {fault}"),
        NodeEvent::PeerRefused { request, message } => format!("peer refused {request}: {message}"),
        NodeEvent::HandoverRevoked { extent } => format!("handover of extent {extent} revoked"),
        NodeEvent::Health { health, reason } => format!("health {health}: {reason}"),
        NodeEvent::WitnessProblem { message } => format!("witness: {message}"),
        NodeEvent::ActingAlone { generation } => format!("acting alone (generation {generation})"),
        NodeEvent::TookOver { extents, generation } => format!("took over {extents} extents (generation {generation})"),
        NodeEvent::ConflictsSaved { extent, blocks } => format!("{blocks} blocks of extent {extent} saved to the conflict file"),
        NodeEvent::ResyncDone { extents, blocks_differing } => {
            format!("resync done: {extents} extents, {blocks_differing} blocks differed")
        }
        NodeEvent::OutageResolved { generation } => format!("outage {generation} over"),
        NodeEvent::Degraded { mode, reason } => format!("DEGRADED ({mode}): {reason}"),
        NodeEvent::CaughtUp { mode, after_seconds } => format!("caught up after {}: {mode} again", duration(*after_seconds)),
        NodeEvent::ModeChanged { from, to } => format!("mode {from} -> {to}"),
    }
}

/// Wall-clock `HH:MM:SS` (UTC) without a date crate.
mod chrono_free {
    pub fn clock(unix_ms: u64) -> String {
        let s = unix_ms / 1000;
        format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
    }
}
