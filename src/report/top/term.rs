//! The terminal driver: raw mode and the alternate screen around a loop that draws the
//! newest frame and answers keys. The terminal is restored on every way out, panics
//! included.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Once};
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::{cursor, execute, terminal};

use super::model::TopFrame;
use super::view::{Action, TopScreen, TopView};

/// How long to wait for a key before looking for frames again: the latency of a new frame.
const POLL: Duration = Duration::from_millis(50);

/// Set while this process has the terminal in raw mode on the alternate screen; whoever
/// swaps it to false restores the terminal (the guard or the panic hook, exactly once).
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let mut out = io::stdout();
        let _ = execute!(out, terminal::LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
        let _ = out.flush();
    }
}

/// Restores the terminal when dropped: on return, on `?`, and while a panic unwinds.
struct TermGuard;

impl TermGuard {
    fn enter() -> io::Result<TermGuard> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on the guard restores whatever part of the setup succeeded.
        let guard = TermGuard;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// The panic message is printed before unwinding reaches the guard: restore first, or
/// the message lands on the alternate screen and vanishes with it.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Runs the full-screen view until the user quits (then sets `stop`), someone else sets
/// `stop` (a SIGINT handler, the end of the input), or the sender hangs up.
/// Draws the newest frame only when several are queued.
pub fn run_terminal(frames: Receiver<TopFrame>, stop: Arc<AtomicBool>) -> io::Result<()> {
    run_terminal_with(frames, stop, TopView::new())
}

/// As [`run_terminal`], starting from the given view (sort, filter).
pub fn run_terminal_with(
    frames: Receiver<TopFrame>,
    stop: Arc<AtomicBool>,
    view: TopView,
) -> io::Result<()> {
    let _guard = TermGuard::enter()?;
    let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    term.clear()?;
    let mut screen = TopScreen::new(view);
    let mut dirty = true;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut hung_up = false;
        loop {
            match frames.try_recv() {
                Ok(f) => dirty |= screen.on_frame(f),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    hung_up = true;
                    break;
                }
            }
        }
        if hung_up {
            return Ok(());
        }
        if dirty {
            term.draw(|f| screen.draw(f))?;
            dirty = false;
        }
        if event::poll(POLL)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => match screen.on_key(key) {
                    Action::Quit => {
                        stop.store(true, Ordering::SeqCst);
                        return Ok(());
                    }
                    Action::Redraw => dirty = true,
                    Action::None => {}
                },
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}
