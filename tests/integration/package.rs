//! What the .deb ships beside the binary, checked without building the package (ci/package.sh
//! builds and installs that): the `completions` scripts and `man` pages cover every verb and
//! work in their shell / render as roff, the systemd units pass `systemd-analyze verify` and keep
//! the properties the operator docs promise, and contrib/sync.env documents every environment
//! variable imgarc reads.

use crate::support::{bare_cmd, skip_or_fail_in_ci};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn stdout_of(args: &[&str]) -> String {
    let out = bare_cmd().args(args).output().unwrap();
    assert!(out.status.success(), "imgarc {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The verbs as `imgarc --help` lists them (so a verb added later is covered without editing
/// this test), without clap's `help`.
fn verbs() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let list = help.split("Commands:\n").nth(1).expect("`imgarc --help` has a Commands: section");
    let verbs: Vec<String> = list
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ")) // a wrapped description is indented further
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(str::to_string)
        .collect();
    for expected in ["init", "archive", "sync", "forget", "prune", "report", "completions", "man"] {
        assert!(verbs.iter().any(|v| v == expected), "{expected} missing from the verbs parsed out of --help: {verbs:?}");
    }
    verbs
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn completions_name_every_verb_and_complete_in_bash() {
    let verbs = verbs();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        for verb in &verbs {
            assert!(script.contains(verb.as_str()), "the {shell} completion script never mentions the verb {verb}");
        }
        // Global and per-verb flags are completed too.
        for flag in ["repo", "os-cloud", "filter", "keep-daily"] {
            assert!(script.contains(flag), "the {shell} completion script lacks --{flag}");
        }
        // Each script must at least parse in its shell; bash is always there, zsh and fish may not be.
        if have(shell) {
            let flag = if shell == "fish" { "--no-execute" } else { "-n" };
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("completion");
            std::fs::write(&file, &script).unwrap();
            let out = Command::new(shell).arg(flag).arg(&file).output().unwrap();
            assert!(out.status.success(), "{shell} {flag} rejects the completion script: {}", String::from_utf8_lossy(&out.stderr));
        } else {
            eprintln!("skipped: {shell} is not installed, its completion script is not parsed");
        }
    }

    // The bash script really completes: `imgarc sy<TAB>` offers sync, `imgarc sync --fi<TAB>` --filter.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgarc.bash");
    std::fs::write(&file, stdout_of(&["completions", "bash"])).unwrap();
    let complete = |words: &str| -> String {
        let script = format!(
            "source {file}; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
             COMP_POINT=${{#COMP_LINE}}; _imgarc imgarc \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file = file.display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "bash completion of {words:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let verbs_offered = complete("imgarc sy");
    assert!(verbs_offered.lines().any(|l| l == "sync"), "`imgarc sy<TAB>` does not offer sync: {verbs_offered:?}");
    let flags_offered = complete("imgarc sync --fi");
    assert!(flags_offered.lines().any(|l| l == "--filter"), "`imgarc sync --fi<TAB>` does not offer --filter: {flags_offered:?}");
}

#[test]
fn completions_reject_an_unknown_shell_as_a_usage_error() {
    let out = bare_cmd().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "the error names the value and the choices: {err}");
}

#[test]
fn man_pages_render_and_cover_every_verb() {
    let verbs = verbs();
    let page = stdout_of(&["man"]);
    assert!(page.contains(".TH imgarc 1"), "imgarc man does not start an imgarc(1) page: {}", &page[..page.len().min(300)]);
    for verb in &verbs {
        assert!(page.contains(&format!("imgarc\\-{}(1)", verb.replace('-', "\\-"))), "imgarc(1) does not list the verb {verb}");
    }
    assert!(page.contains("Exit codes"), "imgarc(1) lacks the exit codes of --help");

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    stdout_of(&["man", "-o", out_dir.to_str().unwrap()]);
    let mut pages: BTreeSet<String> = BTreeSet::new();
    for e in std::fs::read_dir(&out_dir).unwrap() {
        pages.insert(e.unwrap().file_name().into_string().unwrap());
    }
    assert!(pages.contains("imgarc.1"), "no imgarc.1 in {pages:?}");
    assert_eq!(std::fs::read_to_string(out_dir.join("imgarc.1")).unwrap(), page, "imgarc.1 differs from `imgarc man`'s output");
    for verb in &verbs {
        let name = format!("imgarc-{verb}.1");
        assert!(pages.contains(&name), "no page {name} in {pages:?}");
        let text = std::fs::read_to_string(out_dir.join(&name)).unwrap();
        assert!(text.contains(&format!(".TH imgarc-{verb} 1")), "{name} is not titled imgarc-{verb}(1)");
    }
    // Nested verbs get their own pages too.
    assert!(pages.contains("imgarc-key-add.1"), "no page for `imgarc key add` in {pages:?}");

    // The roff renders: man(1) formats the sync page with its options and no warnings.
    if have("man") {
        let out =
            Command::new("man").args(["--warnings", "-l"]).arg(out_dir.join("imgarc-sync.1")).env("MANWIDTH", "100").output().unwrap();
        assert!(out.status.success(), "man -l imgarc-sync.1 failed: {}", String::from_utf8_lossy(&out.stderr));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("imgarc-sync") && shown.contains("--filter"), "the rendered sync page lacks its name or --filter: {shown}");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "man warns about the roff of imgarc-sync.1: {warnings}");
    } else {
        eprintln!("skipped: man is not installed, the pages are not rendered");
    }
}

#[test]
fn man_into_an_unusable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = bare_cmd().args(["man", "-o"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("man page directory") && err.contains(&*file.to_string_lossy()), "the error names the directory: {err}");
}

const UNITS: &[&str] = &[
    "imgarc-sync.service",
    "imgarc-sync.timer",
    "imgarc-retention.service",
    "imgarc-retention.timer",
    "imgarc-prune.service",
    "imgarc-report.service",
    "imgarc-failure@.service",
    "imgarc-copy.service",
    "imgarc-copy.timer",
    "imgarc-drill.service",
    "imgarc-drill.timer",
];

/// The units of [`UNITS`] that run an imgarc verb (the failure template runs none).
const JOB_SERVICES: &[&str] = &[
    "imgarc-sync.service",
    "imgarc-retention.service",
    "imgarc-prune.service",
    "imgarc-report.service",
    "imgarc-copy.service",
    "imgarc-drill.service",
];

fn unit(name: &str) -> String {
    read(&format!("contrib/systemd/{name}"))
}

/// The values of `key=` lines in a unit (comments and continuation lines are not assignments).
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string).collect()
}

#[test]
fn units_are_the_ones_shipped_and_pass_systemd_analyze_verify() {
    let mut present: Vec<String> =
        std::fs::read_dir(repo_file("contrib/systemd")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    present.sort();
    let mut expected: Vec<String> = UNITS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(present, expected, "contrib/systemd holds other units than this test checks");

    if !have("systemd-analyze") {
        skip_or_fail_in_ci("systemd-analyze is not installed, the units are not verified");
        return;
    }
    // verify needs each ExecStart binary: the units as shipped, naming this build's imgarc. A
    // template is verified through an instance, the name the units' OnFailure= gives it.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_imgarc");
    let mut files = Vec::new();
    for name in UNITS {
        let file_name = name.replace("@.service", "@imgarc-sync.service.service");
        let path = dir.path().join(&file_name);
        std::fs::write(&path, unit(name).replace("/usr/bin/imgarc", bin)).unwrap();
        files.push(path);
    }
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).args(&files).env("SYSTEMD_LOG_LEVEL", "notice").output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Some environments (no /run/systemd, a container) cannot load the system's units at all.
    if !out.status.success() && said.contains("Failed to initialize manager") {
        skip_or_fail_in_ci(&format!("systemd-analyze verify cannot run here: {said}"));
        return;
    }
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify reports problems in contrib/systemd: {said}");
}

#[test]
fn units_keep_the_operator_promises() {
    let mut metrics_files = BTreeSet::new();
    for &name in JOB_SERVICES {
        let text = unit(name);
        assert_eq!(values(&text, "User"), ["imgarc"], "{name} runs as the imgarc user");
        assert_eq!(values(&text, "CacheDirectory"), ["imgarc"], "{name}: CacheDirectory=imgarc");
        assert!(values(&text, "Environment").contains(&"IMGARC_CACHE_DIR=%C/imgarc".to_string()), "{name}: the cache is CacheDirectory's");
        let creds = values(&text, "LoadCredential");
        assert!(creds.iter().any(|c| c.starts_with("imgarc-password:/")), "{name}: the password is the imgarc-password credential");
        assert!(creds.iter().any(|c| c.starts_with("secure.yaml:/")), "{name}: secure.yaml is a credential");
        assert!(
            values(&text, "Environment").contains(&"OS_CLIENT_SECURE_FILE=%d/secure.yaml".to_string()),
            "{name}: imgarc finds secure.yaml"
        );
        assert_eq!(values(&text, "EnvironmentFile"), ["/etc/imgarc/sync.env"], "{name}: the packaged environment file");
        assert_eq!(values(&text, "OnFailure"), ["imgarc-failure@%n.service"], "{name} alerts on failure");
        // A hung run is capped: RuntimeMaxSec= for a long-running service, the start timeout for a
        // oneshot (systemd ignores RuntimeMaxSec= there).
        let capped = match values(&text, "Type").as_slice() {
            [t] if t == "oneshot" => !values(&text, "TimeoutStartSec").is_empty(),
            [t] if t == "exec" || t == "simple" => !values(&text, "RuntimeMaxSec").is_empty(),
            t => panic!("{name}: unexpected Type= {t:?}"),
        };
        assert!(capped, "{name} has no cap on a hung run");
        let exec = values(&text, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}: one step per unit, so one failing step does not skip the others");
        assert!(exec[0].starts_with("/usr/bin/imgarc "), "{name} runs the packaged binary: {}", exec[0]);
        if name != "imgarc-report.service" {
            let words: Vec<&str> = exec[0].split_whitespace().collect();
            let at = words.iter().position(|w| *w == "--metrics-file").unwrap_or_else(|| panic!("{name} writes no --metrics-file"));
            let file = words[at + 1];
            assert!(file.starts_with("/var/lib/prometheus/node-exporter/imgarc-") && file.ends_with(".prom"), "{name}: {file}");
            assert!(metrics_files.insert(file.to_string()), "{name} overwrites another step's metrics file {file}");
        }
    }

    // Sync and copy resume where they stopped, a drill samples again: transient failures are
    // retried, deliberate codes (3 included: a failed drill is a finding) are not.
    for name in ["imgarc-sync.service", "imgarc-copy.service", "imgarc-drill.service"] {
        let text = unit(name);
        let prevent: BTreeSet<String> =
            values(&text, "RestartPreventExitStatus").iter().flat_map(|v| v.split_whitespace().map(str::to_string)).collect();
        for code in ["3", "10", "11", "12"] {
            assert!(prevent.contains(code), "{name}: exit {code} must not be retried: RestartPreventExitStatus={prevent:?}");
        }
        assert_eq!(values(&text, "Restart"), ["on-failure"], "{name}");
        assert!(
            !values(&text, "SuccessExitStatus").iter().any(|v| v.split_whitespace().any(|c| c == "3")),
            "{name}: exit 3 (an image or snapshot failed) must fail the unit"
        );
    }
    let copy = unit("imgarc-copy.service");
    assert!(values(&copy, "ExecStart")[0].contains("copy --to ${IMGARC_COPY_TO} "), "the copy target is one word, from sync.env");

    // The chain: forget pulls in prune and report without making them depend on its success.
    let retention = unit("imgarc-retention.service");
    let wants: Vec<String> = values(&retention, "Wants").iter().flat_map(|v| v.split_whitespace().map(str::to_string)).collect();
    assert!(wants.contains(&"imgarc-prune.service".into()) && wants.contains(&"imgarc-report.service".into()), "{wants:?}");
    assert!(values(&retention, "Requires").is_empty() && values(&unit("imgarc-prune.service"), "Requires").is_empty());
    assert!(values(&unit("imgarc-report.service"), "After").iter().any(|v| v.contains("imgarc-prune.service")), "report runs after prune");
}

/// The ExecStart command lines parse with this build's command line (a renamed flag would
/// otherwise only show at 02:30 in the journal).
#[test]
fn unit_command_lines_parse() {
    // The units are written against --metrics-file; a build without it cannot run them.
    assert!(stdout_of(&["sync", "--help"]).contains("--metrics-file"), "sync --help has no --metrics-file");
    for name in JOB_SERVICES {
        for line in values(&unit(name), "ExecStart") {
            // Variables the unit expands from sync.env: a stand-in value.
            let line = line.replace("${IMGARC_COPY_TO}", "/srv/imgarc-copy");
            let args: Vec<&str> = line.split_whitespace().skip(1).collect();
            // --help after the arguments: clap parses them all first, then prints help and exits 0.
            let out = bare_cmd().args(&args).arg("--help").output().unwrap();
            assert!(out.status.success(), "{name}: `imgarc {}` does not parse: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Every environment variable imgarc reads: the string literals in src/ that name one
/// (`"IMGARC_…"`, `"OS_…"`, `"AWS_…"`, `"CREDENTIALS_DIRECTORY"`), test hooks excepted.
fn variables_read() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_file("src"), &mut files);
    let mut vars = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let is_name = !piece.is_empty() && piece.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            let ours = ["IMGARC_", "OS_", "AWS_"].iter().any(|p| piece.starts_with(p) && piece.len() > p.len())
                || piece == "CREDENTIALS_DIRECTORY";
            if is_name && ours && !piece.starts_with("IMGARC_TEST_") {
                vars.insert(piece.to_string());
            }
        }
    }
    vars
}

#[test]
fn example_environment_file_documents_every_variable() {
    let vars = variables_read();
    for v in ["IMGARC_REPO", "IMGARC_CACHE_DIR", "OS_CLOUD", "OS_PASSWORD", "AWS_ACCESS_KEY_ID", "CREDENTIALS_DIRECTORY"] {
        assert!(vars.contains(v), "the scan of src/ missed {v}: {vars:?}");
    }
    let env = read("contrib/sync.env");
    let words: BTreeSet<&str> = env.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
    let missing: Vec<&String> = vars.iter().filter(|v| !words.contains(v.as_str())).collect();
    assert!(missing.is_empty(), "contrib/sync.env does not document {missing:?}");
    // The variables a unit's command line expands (`${NAME}`) are documented there too, and may be set.
    let mut vars = vars;
    for name in UNITS {
        for piece in unit(name).split("${").skip(1) {
            let var = piece.split('}').next().unwrap();
            assert!(words.contains(var), "{name} expands ${{{var}}}, which contrib/sync.env does not document");
            vars.insert(var.to_string());
        }
    }
    assert!(vars.contains("IMGARC_COPY_TO"), "the scan of the units missed IMGARC_COPY_TO");

    // systemd's EnvironmentFile= syntax: comments, blank lines, NAME=value; and no secret is set.
    let secrets = [
        "IMGARC_PASSWORD",
        "OS_PASSWORD",
        "OS_TOKEN",
        "OS_AUTH_TOKEN",
        "OS_APPLICATION_CREDENTIAL_SECRET",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ];
    for (n, line) in env.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, _) = line.split_once('=').unwrap_or_else(|| panic!("contrib/sync.env:{}: not NAME=value: {line}", n + 1));
        assert!(vars.contains(name), "contrib/sync.env:{}: sets {name}, which imgarc does not read", n + 1);
        assert!(!secrets.contains(&name), "contrib/sync.env:{}: sets the secret {name}", n + 1);
    }
}
