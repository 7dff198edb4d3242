//! The screen side of `top`: sort, filter, scroll and pause state, key handling, and
//! drawing a [`TopFrame`] with ratatui. Draws into any backend, so tests use `TestBackend`.

use std::cell::Cell;
use std::cmp::Ordering;
use std::net::IpAddr;

use ratatui::Frame;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell as TableCell, Paragraph, Row, Table};

use super::model::{TopFrame, TopRow};
use crate::decode::SockAddr;
use crate::flow::conn::{Handshake, Side};
use crate::tcp::TcpState;
use crate::time::{Dur, NANOS_PER_SEC, Ts};

/// What the caller should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed on screen.
    None,
    /// The view changed: draw again.
    Redraw,
    /// The user asked to quit.
    Quit,
}

/// The row order; `s` steps through them in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Oldest first.
    Age,
    /// Longest without a packet first.
    Idle,
    /// Most packets first.
    Packets,
    /// Most payload bytes first.
    Bytes,
    /// By the two sides' states in netstat's order (ESTABLISHED first), so each pair of
    /// states (CLOSE_WAIT with FIN_WAIT2, ...) forms a block.
    State,
    /// By server port, then client address.
    Port,
}

impl SortKey {
    pub const ALL: [SortKey; 6] = [
        SortKey::Age,
        SortKey::Idle,
        SortKey::Packets,
        SortKey::Bytes,
        SortKey::State,
        SortKey::Port,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Age => "age",
            SortKey::Idle => "idle",
            SortKey::Packets => "packets",
            SortKey::Bytes => "bytes",
            SortKey::State => "state",
            SortKey::Port => "port",
        }
    }

    fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }

    fn compare(self, a: &TopRow, b: &TopRow, now: Ts) -> Ordering {
        match self {
            SortKey::Age => b.age(now).cmp(&a.age(now)),
            SortKey::Idle => b.idle(now).cmp(&a.idle(now)),
            SortKey::Packets => b.total_packets().cmp(&a.total_packets()),
            SortKey::Bytes => b.total_bytes().cmp(&a.total_bytes()),
            SortKey::State => state_rank(a).cmp(&state_rank(b)),
            SortKey::Port => (a.server.port, a.client).cmp(&(b.server.port, b.client)),
        }
    }
}

fn rank(s: TcpState) -> usize {
    TcpState::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

fn state_rank(r: &TopRow) -> (usize, usize) {
    let (c, s) = (rank(r.states[0]), rank(r.states[1]));
    (c.min(s), c.max(s))
}

/// Which rows to show. Terms of one kind are alternatives, kinds must all match:
/// `CLOSE_WAIT FIN_WAIT2 :443` is "either state, on port 443".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Either side in one of these states.
    pub states: Vec<TcpState>,
    /// Either side on one of these ports.
    pub ports: Vec<u16>,
    /// Either side at one of these addresses (an address matches every port).
    pub addrs: Vec<AddrTerm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrTerm {
    Ip(IpAddr),
    Addr(SockAddr),
}

impl Filter {
    /// Parses what was typed at the `/` prompt. Terms, separated by spaces or commas:
    /// a state (`CLOSE_WAIT`, `close-wait`, `estab`, `CLOSE`), a port (`:443`, `port 443`,
    /// `443`), an address (`10.0.0.1`, `::1`) or address:port (`10.0.0.1:80`, `[::1]:80`).
    /// Empty text is no filter.
    pub fn parse(text: &str) -> Result<Option<Filter>, String> {
        let mut f = Filter::default();
        let mut words = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty());
        while let Some(w) = words.next() {
            if w.eq_ignore_ascii_case("port") {
                let n = words.next().ok_or("'port' needs a number: port 443")?;
                f.ports.push(parse_port(n)?);
            } else if let Some(n) = w.strip_prefix(':') {
                f.ports.push(parse_port(n)?);
            } else if w.bytes().all(|b| b.is_ascii_digit()) {
                f.ports.push(parse_port(w)?);
            } else if let Some(st) = parse_state(w) {
                f.states.push(st);
            } else if let Ok(ip) = w.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                f.addrs.push(AddrTerm::Ip(ip));
            } else if let Ok(a) = w.parse::<SockAddr>() {
                f.addrs.push(AddrTerm::Addr(a));
            } else {
                return Err(format!(
                    "'{w}': expected a state (CLOSE_WAIT), a port (:443, port 443) or an address"
                ));
            }
        }
        let empty = f.states.is_empty() && f.ports.is_empty() && f.addrs.is_empty();
        Ok((!empty).then_some(f))
    }

    pub fn matches(&self, r: &TopRow) -> bool {
        let ends = [r.client, r.server];
        (self.states.is_empty() || r.states.iter().any(|s| self.states.contains(s)))
            && (self.ports.is_empty() || ends.iter().any(|e| self.ports.contains(&e.port)))
            && (self.addrs.is_empty()
                || ends.iter().any(|e| {
                    self.addrs.iter().any(|t| match t {
                        AddrTerm::Ip(ip) => e.ip == *ip,
                        AddrTerm::Addr(a) => e == a,
                    })
                }))
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("'{s}' is not a port (0-65535)"))
}

fn parse_state(w: &str) -> Option<TcpState> {
    // netstat -n prints CLOSE where ss and tcpstate print CLOSED.
    if w.eq_ignore_ascii_case("close") {
        return Some(TcpState::Closed);
    }
    TcpState::from_name(w)
}

/// The `/` prompt being typed.
#[derive(Clone, Debug, Default)]
struct Prompt {
    text: String,
    error: Option<String>,
}

/// Sort, filter, scroll and pause: everything about the screen that is not the data.
#[derive(Debug)]
pub struct TopView {
    pub sort: SortKey,
    pub reverse: bool,
    pub filter: Option<Filter>,
    /// The filter as typed, shown in the status line and offered again at the prompt.
    pub filter_text: String,
    pub paused: bool,
    /// First row shown (after sorting and filtering).
    pub scroll: usize,
    prompt: Option<Prompt>,
    /// Rows that matched and rows that fit, from the last draw: scrolling keys stop there.
    last_rows: Cell<usize>,
    last_page: Cell<usize>,
}

impl Default for TopView {
    fn default() -> Self {
        TopView {
            sort: SortKey::Age,
            reverse: false,
            filter: None,
            filter_text: String::new(),
            paused: false,
            scroll: 0,
            prompt: None,
            last_rows: Cell::new(0),
            last_page: Cell::new(1),
        }
    }
}

impl TopView {
    pub fn new() -> TopView {
        TopView::default()
    }

    /// Sets the filter from text as typed at the prompt.
    pub fn set_filter(&mut self, text: &str) -> Result<(), String> {
        self.filter = Filter::parse(text)?;
        self.filter_text = if self.filter.is_some() {
            text.trim().to_string()
        } else {
            String::new()
        };
        self.scroll = 0;
        Ok(())
    }

    pub fn prompt_open(&self) -> bool {
        self.prompt.is_some()
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Action {
        // Key releases (reported on Windows and by kitty's protocol) would act twice.
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C')) {
            return Action::Quit;
        }
        if let Some(prompt) = self.prompt.as_mut() {
            match key.code {
                KeyCode::Esc => self.prompt = None,
                KeyCode::Enter => {
                    let text = prompt.text.clone();
                    match self.set_filter(&text) {
                        Ok(()) => self.prompt = None,
                        Err(e) => {
                            if let Some(p) = self.prompt.as_mut() {
                                p.error = Some(e);
                            }
                        }
                    }
                }
                KeyCode::Backspace => {
                    prompt.text.pop();
                    prompt.error = None;
                }
                KeyCode::Char(c) if !ctrl => {
                    prompt.text.push(c);
                    prompt.error = None;
                }
                _ => return Action::None,
            }
            return Action::Redraw;
        }
        let page = self.last_page.get().max(1);
        let last = self.last_rows.get().saturating_sub(page);
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.scroll = 0;
            }
            KeyCode::Char('r') => self.reverse = !self.reverse,
            KeyCode::Char('/') => {
                self.prompt = Some(Prompt {
                    text: self.filter_text.clone(),
                    error: None,
                })
            }
            KeyCode::Char('c') => {
                self.filter = None;
                self.filter_text.clear();
                self.scroll = 0;
            }
            KeyCode::Down | KeyCode::Char('j') => self.scroll = (self.scroll + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(page).min(last),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.scroll = last,
            _ => return Action::None,
        }
        Action::Redraw
    }

    /// The rows that pass the filter, in display order.
    pub fn visible_rows<'a>(&self, data: &'a TopFrame) -> Vec<&'a TopRow> {
        let mut rows: Vec<&TopRow> = data
            .rows
            .iter()
            .filter(|r| self.filter.as_ref().is_none_or(|f| f.matches(r)))
            .collect();
        let now = data.now;
        rows.sort_by(|a, b| {
            let o = self.sort.compare(a, b, now).then(a.id.cmp(&b.id));
            if self.reverse { o.reverse() } else { o }
        });
        rows
    }

    pub fn render(&self, frame: &mut Frame, data: &TopFrame) {
        let area = frame.area();
        let header = header_lines(data, self.paused, area.width);
        let header_height = u16::try_from(header.len()).unwrap_or(u16::MAX);
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(header_height),
            Constraint::Min(0),
            Constraint::Length(2),
        ])
        .areas(area);
        frame.render_widget(Paragraph::new(header), head);

        let rows = self.visible_rows(data);
        // One line of the table is its header.
        let page = usize::from(body.height.saturating_sub(1)).max(1);
        let first = self.scroll.min(rows.len().saturating_sub(page));
        self.last_rows.set(rows.len());
        self.last_page.set(page);
        let shown = rows.get(first..).unwrap_or_default();
        let shown = &shown[..shown.len().min(page)];
        frame.render_widget(table(shown, data.now, body.width), body);

        let status = self.status_line(data, rows.len(), first, shown.len());
        frame.render_widget(Paragraph::new(vec![status, self.help_line()]), foot);
    }

    fn status_line(
        &self,
        data: &TopFrame,
        matched: usize,
        first: usize,
        shown: usize,
    ) -> Line<'static> {
        let mut spans = Vec::new();
        if self.paused {
            spans.push(Span::styled(
                " PAUSED ",
                Style::default()
                    .fg(Color::Black)
                    .bg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
            ));
            spans.push(Span::raw(" "));
        }
        let order = match (self.sort, self.reverse) {
            (SortKey::Age, false) => "oldest first",
            (SortKey::Age, true) => "newest first",
            (SortKey::Idle, false) => "most idle first",
            (SortKey::Idle, true) => "least idle first",
            (SortKey::Packets | SortKey::Bytes, false) => "most first",
            (SortKey::Packets | SortKey::Bytes, true) => "fewest first",
            (_, false) => "ascending",
            (_, true) => "descending",
        };
        spans.push(Span::raw(format!("sort {} ({order})", self.sort.name())));
        if self.filter.is_some() {
            spans.push(Span::raw("  filter "));
            spans.push(Span::styled(
                self.filter_text.clone(),
                Style::default().add_modifier(Modifier::BOLD),
            ));
        }
        let range = if shown == 0 {
            format!("  rows 0 of {matched}")
        } else {
            format!("  rows {}-{} of {matched}", first + 1, first + shown)
        };
        spans.push(Span::raw(range));
        if self.filter.is_some() {
            spans.push(Span::raw(format!(" (of {})", data.rows.len())));
        }
        if let Some(err) = self.prompt.as_ref().and_then(|p| p.error.as_ref()) {
            spans.push(Span::styled(
                format!("  {err}"),
                Style::default().fg(Color::Red),
            ));
        }
        Line::from(spans)
    }

    fn help_line(&self) -> Line<'static> {
        let key = Style::default().add_modifier(Modifier::BOLD);
        if let Some(p) = &self.prompt {
            return Line::from(vec![
                Span::styled("filter> ", key),
                Span::raw(p.text.clone()),
                Span::styled("_", Style::default().add_modifier(Modifier::SLOW_BLINK)),
                Span::raw("   Enter apply, Esc cancel; STATE, :PORT, port N, ADDR[:PORT]"),
            ]);
        }
        let mut spans = Vec::new();
        for (k, what) in [
            ("q", "quit"),
            ("p", "pause"),
            ("s", "sort"),
            ("r", "reverse"),
            ("/", "filter"),
            ("c", "clear filter"),
            ("↑↓ PgUp PgDn", "scroll"),
        ] {
            spans.push(Span::styled(k, key));
            spans.push(Span::raw(format!(" {what}  ")));
        }
        Line::from(spans)
    }
}

/// Title, counts per state (wrapped to the width), failures, and a drop warning.
fn header_lines(data: &TopFrame, paused: bool, width: u16) -> Vec<Line<'static>> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let dim = Style::default().fg(Color::DarkGray);
    let mut lines = Vec::new();
    let title = if data.title.is_empty() {
        "tcpstate top".to_string()
    } else {
        format!("tcpstate top: {}", data.title)
    };
    let s = &data.stats;
    let mut first = vec![
        Span::styled(title, bold),
        Span::raw(format!(
            "  {}  open {}  just closed {}  new {:.1}/s  packets {} (tcp {})",
            clock(data.now),
            data.open,
            data.lingering,
            data.conn_rate,
            s.packets,
            s.tcp_packets
        )),
    ];
    if paused {
        first.push(Span::styled("  [paused]", bold));
    }
    lines.push(Line::from(first));

    // netstat's order and names; zero counts dimmed so the eye finds the others.
    let width = usize::from(width.max(1));
    let mut line: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for (state, n) in data.states.iter() {
        let text = format!("{} {n}", state.name());
        let need = text.len() + if used == 0 { 0 } else { 2 };
        if used > 0 && used + need > width {
            lines.push(Line::from(std::mem::take(&mut line)));
            used = 0;
        }
        if used > 0 {
            line.push(Span::raw("  "));
            used += 2;
        }
        used += text.len();
        line.push(Span::styled(text, if n == 0 { dim } else { bold }));
    }
    lines.push(Line::from(line));

    let f = &data.failures;
    let mut third = vec![Span::raw(format!(
        "handshake failures {} (refused {}, unanswered {}, not completed {})  resets {}",
        f.total(),
        f.refused,
        f.unanswered,
        f.not_completed,
        data.resets
    ))];
    if s.evicted > 0 {
        third.push(Span::raw(format!("  evicted {}", s.evicted)));
    }
    lines.push(Line::from(third));

    let drops = s.drops.total();
    if drops > 0 {
        lines.push(Line::from(Span::styled(
            format!(
                "DROPPED {drops} packets (kernel {}, interface {}): states may be wrong",
                s.drops.kernel, s.drops.interface
            ),
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        )));
    }
    lines
}

/// A column of the connection table.
struct Column {
    title: &'static str,
    width: u16,
    /// Lower drops out first when the terminal is narrow.
    priority: u8,
}

fn table(rows: &[&TopRow], now: Ts, width: u16) -> Table<'static> {
    let cells: Vec<[String; 10]> = rows.iter().map(|r| row_cells(r, now)).collect();
    let widest = |i: usize, min: usize| -> u16 {
        let w = cells
            .iter()
            .map(|c| c[i].chars().count())
            .max()
            .unwrap_or(0)
            .max(min);
        u16::try_from(w).unwrap_or(u16::MAX)
    };
    let columns = [
        Column {
            title: "ID",
            width: widest(0, 2),
            priority: 9,
        },
        Column {
            title: "CLIENT",
            width: widest(1, 6),
            priority: 5,
        },
        Column {
            title: "SERVER",
            width: widest(2, 6),
            priority: 6,
        },
        Column {
            title: "CLIENT STATE",
            width: widest(3, 12),
            priority: 8,
        },
        Column {
            title: "SERVER STATE",
            width: widest(4, 12),
            priority: 7,
        },
        Column {
            title: "AGE",
            width: widest(5, 4),
            priority: 3,
        },
        Column {
            title: "IDLE",
            width: widest(6, 4),
            priority: 0,
        },
        Column {
            title: "PKTS",
            width: widest(7, 4),
            priority: 2,
        },
        Column {
            title: "BYTES",
            width: widest(8, 5),
            priority: 1,
        },
        Column {
            title: "NOTE",
            width: widest(9, 4),
            priority: 4,
        },
    ];
    // Drop the least important columns until the rest fit (one space between columns).
    let mut keep = [true; 10];
    let total = |keep: &[bool; 10]| -> u32 {
        let n = keep.iter().filter(|k| **k).count() as u32;
        columns
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(c, _)| u32::from(c.width))
            .sum::<u32>()
            + n.saturating_sub(1)
    };
    let mut order: Vec<usize> = (0..columns.len()).collect();
    order.sort_by_key(|&i| columns[i].priority);
    for i in order {
        if total(&keep) <= u32::from(width) {
            break;
        }
        if columns[i].priority < 9 {
            keep[i] = false;
        }
    }
    let kept: Vec<usize> = (0..columns.len()).filter(|&i| keep[i]).collect();
    // Durations and counts right-aligned, so magnitudes line up.
    let numeric = |i: usize| (5..=8).contains(&i);
    let aligned = move |i: usize, text: String| -> Line<'static> {
        if numeric(i) {
            Line::from(text).right_aligned()
        } else {
            Line::from(text)
        }
    };
    let header = Row::new(
        kept.iter()
            .map(|&i| aligned(i, columns[i].title.to_string())),
    )
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let body: Vec<Row<'static>> = rows
        .iter()
        .zip(cells)
        .map(|(r, c)| {
            let closed = r.ended.is_some();
            let cell = |i: usize| -> TableCell<'static> {
                let style = match i {
                    3 | 4 if !closed => state_style(r.states[i - 3]),
                    _ => Style::default(),
                };
                TableCell::from(aligned(i, c[i].clone())).style(style)
            };
            let row = Row::new(kept.iter().map(|&i| cell(i)));
            if closed {
                row.style(Style::default().fg(Color::DarkGray))
            } else {
                row
            }
        })
        .collect();
    let widths: Vec<Constraint> = kept
        .iter()
        .map(|&i| {
            if i == 9 {
                Constraint::Min(columns[i].width)
            } else {
                Constraint::Length(columns[i].width)
            }
        })
        .collect();
    Table::new(body, widths).header(header).column_spacing(1)
}

fn state_style(s: TcpState) -> Style {
    match s {
        TcpState::Established => Style::default().fg(Color::Green),
        TcpState::CloseWait | TcpState::FinWait2 => Style::default().fg(Color::Yellow),
        TcpState::SynSent | TcpState::SynRecv => Style::default().fg(Color::Cyan),
        TcpState::Closed | TcpState::Listen => Style::default().fg(Color::DarkGray),
        _ => Style::default(),
    }
}

fn row_cells(r: &TopRow, now: Ts) -> [String; 10] {
    let state = |side: Side| {
        format!(
            "{} {}",
            r.states[side.index()].name(),
            fmt_dur(r.in_state(side, now))
        )
    };
    let mut notes: Vec<String> = Vec::new();
    if r.ended.is_some() {
        notes.push("closed".into());
    }
    if r.evicted {
        notes.push("evicted".into());
    }
    match r.handshake {
        Handshake::Refused => notes.push("refused".into()),
        Handshake::Unanswered if r.ended.is_some() => notes.push("unanswered".into()),
        Handshake::NotCompleted if r.ended.is_some() => notes.push("no handshake ACK".into()),
        _ => {
            if let Some(by) = r.reset_by {
                notes.push(format!("reset by {}", by.name()));
            }
        }
    }
    if r.partial {
        notes.push("mid-stream".into());
    }
    [
        r.id.to_string(),
        r.client.to_string(),
        r.server.to_string(),
        state(Side::Client),
        state(Side::Server),
        fmt_dur(r.age(now)),
        fmt_dur(r.idle(now)),
        fmt_count(r.total_packets()),
        fmt_count(r.total_bytes()),
        notes.join(", "),
    ]
}

/// A duration in at most six characters: `0.4s`, `42s`, `5m03s`, `2h05m`, `3d04h`.
pub fn fmt_dur(d: Dur) -> String {
    let ns = d.0.max(0);
    let secs = ns / NANOS_PER_SEC;
    if secs < 10 {
        // Tenths, truncated so 9.96 s does not print as "10.0s".
        format!("{}.{}s", secs, (ns % NANOS_PER_SEC) / (NANOS_PER_SEC / 10))
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86_400 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600)
    }
}

/// A count in at most six characters: exact below 100000, then k, M, G, T.
pub fn fmt_count(n: u64) -> String {
    if n < 100_000 {
        return n.to_string();
    }
    let mut v = n as f64;
    for unit in ["k", "M", "G", "T", "P"] {
        v /= 1000.0;
        if v < 1000.0 {
            return format!("{v:.1}{unit}");
        }
    }
    format!("{:.0}E", v / 1000.0)
}

/// Time of day (UTC) of the packet clock.
fn clock(ts: Ts) -> String {
    if ts.0 == 0 {
        return "--:--:--".into();
    }
    let secs = ts.0.div_euclid(NANOS_PER_SEC).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The view with the frame it shows: while paused, new frames are kept aside and the
/// screen stays as it was; unpausing jumps to the newest.
#[derive(Debug, Default)]
pub struct TopScreen {
    pub view: TopView,
    shown: Option<TopFrame>,
    newest: Option<TopFrame>,
}

impl TopScreen {
    pub fn new(view: TopView) -> TopScreen {
        TopScreen {
            view,
            shown: None,
            newest: None,
        }
    }

    /// Takes a new frame; true when the screen should be drawn again.
    pub fn on_frame(&mut self, frame: TopFrame) -> bool {
        if self.view.paused {
            self.newest = Some(frame);
            false
        } else {
            self.shown = Some(frame);
            true
        }
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        let action = self.view.handle_key(key);
        if !self.view.paused
            && let Some(f) = self.newest.take()
        {
            self.shown = Some(f);
        }
        action
    }

    /// The frame on screen.
    pub fn shown(&self) -> Option<&TopFrame> {
        self.shown.as_ref()
    }

    pub fn draw(&self, frame: &mut Frame) {
        match &self.shown {
            Some(data) => self.view.render(frame, data),
            None => self.view.render(frame, &TopFrame::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fit_six_columns() {
        let s = |x: f64| fmt_dur(Dur::from_secs_f64(x));
        assert_eq!(s(0.0), "0.0s");
        assert_eq!(s(9.96), "9.9s");
        assert_eq!(s(42.5), "42s");
        assert_eq!(s(303.0), "5m03s");
        assert_eq!(s(7500.0), "2h05m");
        assert_eq!(s(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(fmt_dur(Dur(-5)), "0.0s");
        assert_eq!(fmt_dur(Dur(i64::MAX)), "106751d23h");
    }

    #[test]
    fn counts_fit_six_columns() {
        assert_eq!(fmt_count(99_999), "99999");
        assert_eq!(fmt_count(123_456), "123.5k");
        assert_eq!(fmt_count(7_200_000_000), "7.2G");
        assert!(fmt_count(u64::MAX).len() <= 6);
    }

    #[test]
    fn filter_terms() {
        let f = Filter::parse("close-wait, FIN_WAIT2 port 443 :80 10.0.0.1 [::1]:22")
            .unwrap()
            .unwrap();
        assert_eq!(f.states, vec![TcpState::CloseWait, TcpState::FinWait2]);
        assert_eq!(f.ports, vec![443, 80]);
        assert_eq!(
            f.addrs,
            vec![
                AddrTerm::Ip("10.0.0.1".parse().unwrap()),
                AddrTerm::Addr("[::1]:22".parse().unwrap())
            ]
        );
        assert_eq!(Filter::parse("  ").unwrap(), None);
        assert_eq!(
            Filter::parse("CLOSE").unwrap().unwrap().states,
            vec![TcpState::Closed]
        );
        assert!(Filter::parse("port").is_err());
        assert!(Filter::parse(":99999").is_err());
        assert!(Filter::parse("CLOSE_WAITT").is_err());
    }
}
