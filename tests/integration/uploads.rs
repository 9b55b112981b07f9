//! Uploaded bundles: unpacked as they stream in, only what the manifest names, within limits,
//! and stopped when the client leaves.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use graft::client::AdminClient;
use graft_host::release::Manifest;

use crate::serve::{config, spawn_graft_serve_with};
use crate::util::{wait_until, Env};

/// One tar entry: its header, then its data padded to the 512-byte block.
fn entry(name: &str, size: u64, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    bytes
}

/// Starts a raw `POST /deploy` of a tar body of `length` bytes; the caller writes the body.
fn start_upload(admin: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(admin.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST /deploy HTTP/1.1\r\nhost: graft\r\ncontent-type: application/x-tar\r\n\
         content-length: {length}\r\n\r\n"
    )
    .unwrap();
    stream
}

/// Uploads `bundle` from a thread of its own (the server may answer and close before it is all
/// sent) and returns the status line and body of the answer.
fn upload(admin: &str, bundle: Vec<u8>) -> (String, String) {
    let mut stream = start_upload(admin, bundle.len());
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&bundle);
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let mut buffer = [0; 4096];
    // Until the whole answer is in: its headers, then the content-length they give.
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    drop(stream);
    let _ = sending.join();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Serves the test config with `admin_extra` added to its `[admin]` table.
fn serve(env: &Env, admin_extra: &str) -> (crate::util::KillOnDrop, String) {
    let path = config(env, "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[admin]", &format!("[admin]\n{admin_extra}")),
    )
    .unwrap();
    let (server, _, admin) = spawn_graft_serve_with(&path, &[], &[]);
    (server, admin)
}

#[test]
fn a_bundle_of_20000_entries_or_over_its_limits_is_refused_without_unpacking_it() {
    let env = Env::new();
    let (_server, admin) = serve(&env, "max_bundle_entries = 3");
    let v2 = env.path("releases/v2");
    let manifest = std::fs::read(v2.join("release.toml")).unwrap();

    // The manifest, then 20,000 one-byte entries it does not name.
    let mut bundle = entry("release.toml", manifest.len() as u64, &manifest);
    for i in 0..20_000 {
        bundle.extend(entry(&format!("junk/{i}"), 1, b"x"));
    }
    bundle.extend([0; 1024]);
    let started = Instant::now();
    let (status, body) = upload(&admin, bundle);
    eprintln!(
        "a 20,000-entry bundle was refused in {:?}",
        started.elapsed()
    );
    assert!(status.contains(" 400 "), "{status} {body}");
    assert!(
        body.contains("bundle entry \\\"junk/0\\\" is not a file the manifest names"),
        "{body}"
    );

    // v2's release whole is four entries: over a limit of three, a 413.
    let mut bundle = entry("release.toml", manifest.len() as u64, &manifest);
    for plugin in Manifest::load(&v2).unwrap().plugins {
        let bytes = std::fs::read(v2.join(&plugin.file)).unwrap();
        bundle.extend(entry(
            plugin.file.to_str().unwrap(),
            bytes.len() as u64,
            &bytes,
        ));
    }
    bundle.extend([0; 1024]);
    let (status, body) = upload(&admin, bundle);
    assert!(status.contains(" 413 "), "{status} {body}");
    assert!(body.contains("over its limit of 3 entries"), "{body}");

    let status = AdminClient::new(&admin, None).status().unwrap().host;
    assert_eq!(status.current, 1, "nothing deployed");
    let left = std::fs::read_dir(env.path("data/uploads")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "refused uploads are removed");
}

#[test]
fn an_upload_streams_to_disk_and_stops_when_its_client_leaves() {
    let env = Env::new();
    let (server, admin) = serve(&env, "");
    let peak_kb = || peak_rss_kb(server.id());
    let v2 = env.path("releases/v2");
    let manifest = std::fs::read(v2.join("release.toml")).unwrap();
    let file = Manifest::load(&v2).unwrap().plugins[0].file.clone();

    // A 96 MiB library announced; 64 MiB of it sent, then the client goes away.
    const ANNOUNCED: u64 = 96 << 20;
    let before = peak_kb();
    let head = [
        entry("release.toml", manifest.len() as u64, &manifest),
        entry(file.to_str().unwrap(), ANNOUNCED, &[]),
    ]
    .concat();
    let mut stream = start_upload(&admin, head.len() + ANNOUNCED as usize + 1024);
    stream.write_all(&head).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..64 {
        stream.write_all(&chunk).unwrap();
    }
    let uploads = env.path("data/uploads");
    let unpacked = unpacked_bytes(&uploads, &file);
    wait_until(
        "the upload to reach the disk as it streams",
        Duration::from_secs(60),
        || unpacked() > 32 << 20,
    );
    drop(stream);
    wait_until(
        "the server to stop unpacking and remove the upload",
        Duration::from_secs(60),
        || std::fs::read_dir(&uploads).map_or(0, |d| d.count()) == 0,
    );
    let grew = peak_kb().saturating_sub(before);
    assert!(
        grew < 32 << 10,
        "the upload was held in memory: peak RSS grew by {grew} KB"
    );
    let status = AdminClient::new(&admin, None).status().unwrap().host;
    assert_eq!(status.current, 1, "nothing deployed");
}

/// The most memory a process has used (`VmHWM`), in KB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

/// How many bytes of `file` are unpacked so far in any upload directory under `uploads`.
fn unpacked_bytes<'a>(uploads: &'a Path, file: &'a Path) -> impl Fn() -> u64 + 'a {
    move || {
        std::fs::read_dir(uploads)
            .map(|dirs| {
                dirs.flatten()
                    .filter_map(|d| std::fs::metadata(d.path().join(file)).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}
