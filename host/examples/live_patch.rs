//! Live patching in one process, step by step: serve release v1, patch it to v2 while a slow
//! request is in flight, roll back, refuse a release that does not link.
//!
//! Run: `scripts/demo.sh` (builds the plugins and releases, then runs this), or by hand:
//! `cargo run --example live_patch -- V1_DIR V2_DIR BAD_DIR DATA_DIR`.

use std::path::PathBuf;
use std::time::Duration;

use graft_host::{DisplayChain, Host};
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [v1, v2, bad, data] = args.as_slice() else {
        return Err("usage: live_patch V1_DIR V2_DIR BAD_DIR DATA_DIR".into());
    };
    let host = Host::builder(data).build()?;
    let foo = host.export("foo@1")?;
    let show = |label: &str, out: &Value| {
        println!(
            "  {label:<28} foo(1) = {:<3} computed by foo {} / bar {} / frob {}",
            out["value"], out["foo"], out["bar"], out["frob"]
        );
    };

    let timing = |r: &graft_host::DeployReport| {
        format!("staged in {:.1?}, live {:.0?} later", r.staging, r.go_live)
    };
    let report = host.deploy(v1)?;
    println!(
        "deployed {} as generation {}: {}",
        v1.display(),
        report.generation,
        timing(&report)
    );
    show("new request:", &host.call(&foo, &json!({ "a": 1 }))?);

    // A request that pauses 300 ms between its frob call and its bar call.
    let slow = std::thread::scope(|s| -> Result<Value, Box<dyn std::error::Error>> {
        // A request pins its generation once, with an owned pin (counted in flight).
        let slow = s.spawn(|| {
            let pin = host.pin_owned();
            pin.call::<_, Value>(&foo, &json!({ "a": 1, "pause_ms": 300 }))
        });
        std::thread::sleep(Duration::from_millis(50));
        // Prepare does everything but going live (stage, load, check, link, init)...
        let prepared = host.prepare(v2)?;
        println!(
            "prepared {} as generation {} against generation {}; not live yet",
            v2.display(),
            prepared.id(),
            prepared.base()
        );
        // ...and publish is one store, refused if another release went live meanwhile.
        let report = host.publish(prepared)?;
        println!(
            "published generation {} while a slow request is in flight: {}",
            report.generation,
            timing(&report)
        );
        show("new request:", &host.call(&foo, &json!({ "a": 1 }))?);
        for g in host.status().generations {
            println!(
                "  generation {} {:?}, in flight: {}",
                g.id, g.role, g.in_flight
            );
        }
        Ok(slow.join().expect("slow request thread")?)
    })?;
    show("slow request, started on v1:", &slow);

    let report = host.rollback()?;
    println!(
        "rolled back to {} as generation {}",
        report.release.as_deref().unwrap_or("?"),
        report.generation
    );
    show("new request:", &host.call(&foo, &json!({ "a": 1 }))?);

    match host.deploy(bad) {
        Ok(_) => return Err("the bad release went live".into()),
        Err(error) => println!("refused {}: {}", bad.display(), DisplayChain(&error)),
    }
    show("still serving:", &host.call(&foo, &json!({ "a": 1 }))?);

    host.flush_unloads();
    let status = host.status();
    println!("libraries mapped: {}", status.libraries.len());
    for lib in status.libraries {
        println!("  {} {} {:?}", lib.plugin, lib.version, lib.state);
    }
    Ok(())
}
