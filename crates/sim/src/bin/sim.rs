//! `sim`: runs scenarios over many seeds and reports throughput.
//!
//! ```text
//! cargo run -p skiff-sim --release -- --seeds 1000 --scenario all
//! cargo run -p skiff-sim --release -- --scenario Figure8 --seed 42
//! ```

use std::process::ExitCode;
use std::time::Instant;

use skiff_sim::scenarios::{find, Scenario, ALL};

struct Args {
    seeds: u64,
    first_seed: u64,
    scenarios: Vec<Scenario>,
    single: bool,
}

fn usage() -> String {
    let names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
    format!(
        "usage: sim [--seeds N] [--scenario all|NAME] [--seed S] [--first-seed S]\n\
         scenarios: {}",
        names.join(", ")
    )
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: 10,
        first_seed: 0,
        scenarios: ALL.to_vec(),
        single: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seeds" => {
                args.seeds = value("--seeds")?
                    .parse()
                    .map_err(|e| format!("--seeds: {e}"))?
            }
            "--first-seed" => {
                args.first_seed = value("--first-seed")?
                    .parse()
                    .map_err(|e| format!("--first-seed: {e}"))?
            }
            "--seed" => {
                args.first_seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?;
                args.seeds = 1;
                args.single = true;
            }
            "--scenario" => {
                let name = value("--scenario")?;
                if name != "all" {
                    let s = find(&name).ok_or(format!("unknown scenario {name}"))?;
                    args.scenarios = vec![s];
                }
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Failures are reported by the runner with their seed; keep the default hook's noise out,
    // but say where a panic inside the core happened.
    std::panic::set_hook(Box::new(|info| {
        if info
            .payload()
            .downcast_ref::<skiff_sim::SimFailure>()
            .is_none()
        {
            if let Some(loc) = info.location() {
                eprintln!("panic at {}:{}", loc.file(), loc.line());
            }
        }
    }));
    let start = Instant::now();
    let mut runs = 0u64;
    let mut failures = 0u64;
    let mut virtual_ms = 0u64;
    let mut events = 0u64;
    for s in &args.scenarios {
        let t0 = Instant::now();
        let mut s_virtual = 0;
        for seed in args.first_seed..args.first_seed + args.seeds {
            runs += 1;
            match skiff_sim::run_seed(*s, seed) {
                Ok(o) => {
                    s_virtual += o.virtual_ms;
                    events += o.events;
                    if args.single {
                        println!(
                            "{} seed {seed}: ok, trace {:016x}, {} events, {} virtual ms, {} \
                             entries committed, {} client ops completed",
                            s.name, o.trace, o.events, o.virtual_ms, o.committed, o.ops_completed
                        );
                        if !o.context.is_empty() {
                            println!("  {}", o.context);
                        }
                    }
                }
                Err(msg) => {
                    failures += 1;
                    println!("FAIL {msg}");
                }
            }
        }
        virtual_ms += s_virtual;
        let wall = t0.elapsed().as_secs_f64();
        println!(
            "{:<24} {:>6} seeds {:>8.2} s wall {:>9.1} seeds/s {:>9.0} sim-s/wall-s",
            s.name,
            args.seeds,
            wall,
            args.seeds as f64 / wall.max(1e-9),
            s_virtual as f64 / 1000.0 / wall.max(1e-9)
        );
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "total: {runs} runs, {failures} failed, {wall:.2} s wall, {:.1} seeds/s, {:.0} simulated s per wall s, {events} events",
        runs as f64 / wall.max(1e-9),
        virtual_ms as f64 / 1000.0 / wall.max(1e-9)
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
