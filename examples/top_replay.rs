//! Replays a capture into the live `top` view at its own pace (or SPEED times faster):
//! what `tcpstate top -i IFACE` will look like, and how a producer drives the view.
//!
//!     cargo run --example top_replay -- pcaps/mixed.pcap [SPEED]
//!
//! The capture thread owns the engine and offers a frame every 250 ms on a
//! `sync_channel(1)`; the main thread owns the terminal. After the last packet the clock
//! keeps running, so closed connections linger and go and TIME_WAITs run out.

use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::{Duration, Instant};

use tcpstate::capture::ContainerCounters;
use tcpstate::capture::file::read_files;
use tcpstate::flow::EngineConfig;
use tcpstate::pipeline::Engine;
use tcpstate::report::top::{CaptureDrops, TopConfig, TopFeed, TopModel, run_terminal};
use tcpstate::time::{Dur, Ts};

const TICK: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first().cloned() else {
        eprintln!("usage: top_replay CAPTURE [SPEED]");
        return ExitCode::from(2);
    };
    let speed = match args.get(1).map(|s| s.parse::<f64>()) {
        None => 1.0,
        Some(Ok(s)) if s.is_finite() && s > 0.0 => s,
        Some(_) => {
            eprintln!("SPEED: a number above 0");
            return ExitCode::from(2);
        }
    };
    let (tx, rx) = sync_channel(1);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || produce(&path, speed, tx, &stop))
    };
    let shown = run_terminal(rx, Arc::clone(&stop));
    stop.store(true, Ordering::SeqCst);
    let read = producer.join();
    if let Err(e) = shown {
        eprintln!("top_replay: terminal: {e}");
        return ExitCode::FAILURE;
    }
    match read {
        Ok(Err(e)) => {
            eprintln!("top_replay: {e}");
            ExitCode::FAILURE
        }
        Ok(Ok(())) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn produce(
    path: &str,
    speed: f64,
    tx: std::sync::mpsc::SyncSender<tcpstate::report::top::TopFrame>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut engine = Engine::new(EngineConfig::default());
    let mut feed = TopFeed::new(
        TopModel::new(TopConfig {
            title: format!("{path} (replay x{speed})"),
            ..TopConfig::default()
        }),
        tx,
    );
    let started = Instant::now();
    let mut first: Option<Ts> = None;
    let mut last_tick = Instant::now();
    // The replayed packet clock: where the capture would be now.
    let clock = |first: Ts| first.plus(Dur::from_secs_f64(started.elapsed().as_secs_f64() * speed));
    let result = read_files(
        &[path.to_string()],
        &mut ContainerCounters::default(),
        &mut |pkt| {
            let t0 = *first.get_or_insert(pkt.ts);
            let due = Duration::from_secs_f64((pkt.ts.since(t0).as_secs_f64() / speed).max(0.0));
            loop {
                if last_tick.elapsed() >= TICK {
                    last_tick = Instant::now();
                    if !feed.tick_at(&mut engine, clock(t0), CaptureDrops::default()) {
                        return ControlFlow::Break(());
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    return ControlFlow::Break(());
                }
                let Some(wait) = due.checked_sub(started.elapsed()) else {
                    break;
                };
                thread::sleep(wait.min(Duration::from_millis(20)));
            }
            engine.process(pkt);
            ControlFlow::Continue(())
        },
    );
    let Some(t0) = first else {
        return result.map_err(|e| e.to_string());
    };
    // Past the end the clock runs on: lingering rows go, timers fire.
    while !stop.load(Ordering::SeqCst) {
        if !feed.tick_at(&mut engine, clock(t0), CaptureDrops::default()) {
            break;
        }
        thread::sleep(TICK);
    }
    result.map_err(|e| e.to_string())
}
