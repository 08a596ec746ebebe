//! `restore --to-glance --disk-format X [--subformat S]` against the real test Glance, for
//! every output format imgarc writes: the dry run shows the record, Glance accepts the upload
//! (status active, `disk_format` X, `container_format` bare, size = the bytes sent) through its
//! upload format inspection (`[image_format] require_image_format_match`, on in
//! tests/servers/start-glance unless `GLANCE_REQUIRE_FORMAT_MATCH=false`), and archiving the
//! uploaded image back from Glance gives the same guest disk. Glance's inspection sees a fixed
//! VHD (no header at offset 0, only a footer at the end) as raw, so it refuses it as `vhd`: the
//! test asserts that refusal (and that no active image is left) while the inspection is on.
use crate::format_matrix::{ext4_disk, guest_view, make_input, tools_present, writable, DISK_BYTES, INPUTS, OUTPUTS};
use crate::support::openstack as os;
use crate::support::qcow2_util::tmp;
use crate::support::*;
use imgarc::format::FormatKind;
use serde_json::{json, Value};

fn glance_args(args: &[&str]) -> Vec<String> {
    let mut a = vec!["--glance-url".to_string(), os::env("GLANCE_URL"), "--json".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    a
}

fn run_json(env: &Env, args: &[&str]) -> Value {
    let a = glance_args(args);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    serde_json::from_str(&env.ok(&refs)).unwrap()
}

/// Whether this Glance refuses an upload whose bytes are not its `disk_format`.
fn format_match_required() -> bool {
    std::env::var("GLANCE_REQUIRE_FORMAT_MATCH").map_or(true, |v| v != "false")
}

#[test]
fn glance_upload_inspection_refuses_a_mislabelled_image() {
    let _serial = os::serial();
    if !format_match_required() {
        eprintln!("skipped: this Glance runs without require_image_format_match");
        return;
    }
    let g = os::noauth();
    let name = os::unique("mislabelled");
    let rec = g.create(&os::meta(&name, json!({"disk_format": "vmdk"}))).unwrap();
    let _c = os::Cleanup(g.clone(), rec.id.clone());
    let data = bytes(1 << 20, 21, false);
    let up = g.upload(&rec.id, std::io::Cursor::new(data.clone()), Some(data.len() as u64));
    assert!(up.is_err(), "Glance accepted raw bytes as vmdk: its upload format inspection is off");
    let err = format!("{:#}", up.unwrap_err());
    assert!(err.contains("does not match"), "the refusal names the mismatch: {err}");
    eprintln!("Glance refused raw bytes declared vmdk: {err}");
    assert_ne!(g.get(&rec.id).unwrap().status, "active");
}

#[test]
fn every_disk_format_into_glance_and_back() {
    let _serial = os::serial();
    if !tools_present() {
        return;
    }
    let g = os::noauth();
    let dir = tmp();
    let disk = ext4_disk(dir.path());
    let guest = std::fs::read(&disk).unwrap();
    let env = Env::init("64K");
    // The source snapshot: the disk as qcow2, so every output is a conversion from a
    // decomposed container's guest stream.
    let qcow2 = make_input(dir.path(), &disk, &INPUTS[1]);
    let snap = s(&env.json(&["archive", qcow2.to_str().unwrap(), "--name", "glance-source"]), "snapshot");
    let enforced = format_match_required();
    for output in OUTPUTS {
        let name = os::unique(&format!("fmt-{}", output.name));
        let mut args = vec!["restore", snap.as_str(), "--to-glance", "--name", name.as_str()];
        args.extend_from_slice(output.args);
        let mut dry = args.clone();
        dry.push("--dry-run");
        let plan = run_json(&env, &dry);
        assert_eq!(plan["image"]["disk_format"], output.kind.name(), "{}: {plan}", output.name);
        assert_eq!(plan["image"]["container_format"], "bare", "{plan}");
        assert_eq!(plan["converted_to"], output.kind.name(), "{plan}");
        let disktype = match output.kind {
            FormatKind::Vmdk if output.name.contains("monolithicSparse") => json!("sparse"),
            FormatKind::Vmdk => json!("streamOptimized"),
            _ => Value::Null,
        };
        assert_eq!(plan["image"]["vmware_disktype"], disktype, "{plan}");
        assert!(g.list_filtered(&[("name", &name)], 10).unwrap().is_empty(), "a dry run created an image");
        assert_eq!(plan["warnings"].is_array(), output.name == "vhd-fixed", "the dry run warns of the fixed VHD only: {plan}");

        if !writable(output.kind) {
            eprintln!("skipped: {}: this build does not write {} (dry run checked)", output.name, output.kind.name());
            continue;
        }
        let a = glance_args(&args);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = env.run(&refs);
        let left = g.list_filtered(&[("name", &name)], 10).unwrap();
        let _guards: Vec<os::Cleanup> = left.iter().map(|r| os::Cleanup(g.clone(), r.id.clone())).collect();
        if enforced && output.name == "vhd-fixed" {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "Glance's inspection should see a fixed VHD as raw and refuse it as vhd: {err}");
            assert!(left.iter().all(|r| r.status != "active"), "{left:?}");
            eprintln!("Glance refused the fixed VHD (its inspector reads no footer): {}", err.trim());
            continue;
        }
        assert!(o.status.success(), "{}: {}", output.name, String::from_utf8_lossy(&o.stderr));
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        let rec = g.get(r["image_id"].as_str().unwrap()).unwrap();
        assert_eq!(rec.status, "active", "{}: {rec:?}", output.name);
        assert_eq!(rec.disk_format.as_deref(), Some(output.kind.name()), "{}", output.name);
        assert_eq!(rec.container_format.as_deref(), Some("bare"));
        assert_eq!(rec.size, Some(u(&r, "bytes")), "{}: Glance holds other than the bytes sent", output.name);
        if output.kind == FormatKind::Vmdk {
            let want = if output.name.contains("monolithicSparse") { "sparse" } else { "streamOptimized" };
            assert_eq!(rec.properties["vmware_disktype"], want, "{}", output.name);
        }
        if enforced {
            // Glance computed the virtual size from the header it inspected (VHD: CHS-rounded up).
            assert!(rec.virtual_size.is_some_and(|v| v >= DISK_BYTES), "{}: virtual_size {:?}", output.name, rec.virtual_size);
        }
        eprintln!("{}: Glance image {} active, {} bytes, virtual_size {:?}", output.name, rec.id, rec.size.unwrap_or(0), rec.virtual_size);

        // Archived back from Glance, the image holds the same guest disk.
        let back = run_json(&env, &["archive", &format!("glance:{}", rec.id)]);
        assert_eq!(s(&back, "format"), output.kind.name(), "{back}");
        if !guest_view(output.kind) {
            eprintln!("skipped: {}: this build does not decompose {}", output.name, output.kind.name());
            continue;
        }
        let raw = env.path("back.raw");
        env.ok(&["restore", &s(&back, "snapshot"), "-o", raw.to_str().unwrap(), "--disk-format", "raw"]);
        let got = std::fs::read(&raw).unwrap();
        assert!(got.len() >= guest.len() && got[..guest.len()] == guest[..], "{}: the guest disk from Glance differs", output.name);
        assert!(got[guest.len()..].iter().all(|b| *b == 0), "{}: a size rounding tail must read as zeros", output.name);
        std::fs::remove_file(raw).unwrap();
    }
}
