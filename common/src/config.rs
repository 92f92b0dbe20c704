//! `--config FILE` for every binary: a flat TOML table whose keys are long flag names
//! (`data-dir = "/srv/tessera/meta"`), layered under the environment and the command line:
//! flag > environment variable > file > built-in default.
//!
//! A flag can be set from a file exactly when its clap argument has a long name and an
//! environment variable (`#[arg(long, env = "TESSERA_...")]`), so the clap definitions are the
//! one list of keys; flags without one (one-off actions such as `--restore`, `--json`) stay
//! command-line only. The file's values become the arguments' defaults before clap parses, so
//! clap's own order (command line, then env, then default) does the layering. Every key is
//! checked first: an unknown key, a value of the wrong kind, or a malformed file is refused
//! with one line naming the file and the key, before anything starts.

use clap::builder::Resettable;
use clap::{Arg, ArgAction, Command};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Syntax { path: PathBuf, msg: String },
    #[error("{}: unknown key '{key}'{hint}", path.display())]
    Unknown { path: PathBuf, key: String, hint: String },
    #[error("{}: key '{key}': {msg}", path.display())]
    Value { path: PathBuf, key: String, msg: String },
}

/// Parse the process's command line as `T`, with `--config FILE` layered under it. Exits with a
/// one-line reason (status 2) on a bad file, and as clap does on bad flags.
pub fn parse<T: clap::Parser>() -> T {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cmd = T::command();
    let name = cmd.get_name().to_string();
    let cmd = layer(cmd, &args).unwrap_or_else(|e| {
        eprintln!("{name}: {e}");
        std::process::exit(2)
    });
    let m = cmd.get_matches_from(args);
    T::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
}

/// `cmd` with the values of the file named by `--config` in `args` (if any) as defaults.
pub fn layer(cmd: Command, args: &[OsString]) -> Result<Command, ConfigError> {
    match config_path(args) {
        Some(path) => apply_file(cmd, &path),
        None => Ok(cmd),
    }
}

/// The value of `--config FILE` or `--config=FILE`, looked up before clap parses (the file
/// decides the defaults clap parses with). Clap itself refuses a repeated or valueless one.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(p.into());
        }
    }
    None
}

pub fn apply_file(cmd: Command, path: &Path) -> Result<Command, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let table = parse_toml(&text).map_err(|msg| ConfigError::Syntax { path: path.to_owned(), msg })?;
    apply_table(cmd, &table, path)
}

/// A TOML parse error on one line: its position and message, without the source excerpt.
fn parse_toml(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>().map_err(|e| {
        let msg = e.message().trim().replace('\n', "; ");
        match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {col}: {msg}")
            }
            None => msg,
        }
    })
}

/// Check every key of `table` against `cmd`'s configurable flags (in every subcommand), then set
/// the values as those flags' defaults.
pub fn apply_table(cmd: Command, table: &toml::Table, path: &Path) -> Result<Command, ConfigError> {
    let args = all_args(&cmd);
    let mut values: Vec<(&str, Vec<String>)> = Vec::new();
    for (key, value) in table {
        let err = |msg: String| ConfigError::Value { path: path.to_owned(), key: key.clone(), msg };
        let named: Vec<&Arg> = args.iter().filter(|a| a.get_long() == Some(key.as_str())).copied().collect();
        if named.is_empty() {
            let dashed = key.replace('_', "-");
            let hint = if args.iter().any(|a| a.get_long() == Some(dashed.as_str())) { format!(" (did you mean '{dashed}'? keys are the long flag names)") } else { " (docs/config.md lists the keys)".to_string() };
            return Err(ConfigError::Unknown { path: path.to_owned(), key: key.clone(), hint });
        }
        let settable: Vec<&Arg> = named.into_iter().filter(|a| configurable(a)).collect();
        if settable.is_empty() {
            return Err(err(format!("--{key} can only be given on the command line")));
        }
        let vals = strings(value).map_err(err)?;
        for a in settable {
            check(cmd.get_name(), a, &vals).map_err(err)?;
        }
        values.push((key, vals));
    }
    Ok(set_defaults(cmd, &values))
}

/// Settable from a file (and the environment): a long flag that has an environment variable.
fn configurable(a: &Arg) -> bool {
    a.get_long().is_some() && a.get_env().is_some() && !a.is_positional()
}

fn all_args(cmd: &Command) -> Vec<&Arg> {
    let mut out: Vec<&Arg> = cmd.get_arguments().collect();
    for sc in cmd.get_subcommands() {
        out.extend(all_args(sc));
    }
    out
}

fn takes_values(a: &Arg) -> bool {
    !matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count)
}

/// A TOML value as the strings clap would get on the command line.
fn strings(v: &toml::Value) -> Result<Vec<String>, String> {
    fn scalar(v: &toml::Value) -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            toml::Value::Datetime(d) => Ok(d.to_string()),
            toml::Value::Array(_) | toml::Value::Table(_) => Err("a list may hold only plain values".into()),
        }
    }
    match v {
        toml::Value::Array(a) => a.iter().map(scalar).collect(),
        toml::Value::Table(_) => Err("expects a value, not a table (the file is one flat table of flag names)".into()),
        v => Ok(vec![scalar(v)?]),
    }
}

/// Parse `vals` as clap would parse them for `a`, so a bad value is refused naming its key
/// (rather than later, by clap, as if it had been a flag).
fn check(bin: &str, a: &Arg, vals: &[String]) -> Result<(), String> {
    let long = a.get_long().unwrap_or_default();
    if !takes_values(a) {
        return match vals {
            [v] if v == "true" || v == "false" => Ok(()),
            _ => Err("expects true or false".into()),
        };
    }
    let many = matches!(a.get_action(), ArgAction::Append) || a.get_num_args().is_some_and(|n| n.max_values() > 1);
    if vals.len() != 1 && !many {
        return Err("expects one value, not a list".into());
    }
    let probe = a.clone().required(false).env(Resettable::Reset).global(false);
    let mut line: Vec<String> = vec![bin.to_string()];
    for v in vals {
        line.push(format!("--{long}={v}"));
    }
    match Command::new(bin.to_string()).no_binary_name(false).disable_help_flag(true).disable_version_flag(true).arg(probe).try_get_matches_from(line) {
        Ok(_) => Ok(()),
        Err(e) => Err(clap_line(&e)),
    }
}

/// The first line of a clap error, without its "error: " prefix.
fn clap_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

fn set_defaults(cmd: Command, values: &[(&str, Vec<String>)]) -> Command {
    let cmd = cmd.mut_args(|a| {
        let v = if configurable(&a) { values.iter().find(|(k, _)| a.get_long() == Some(k)) } else { None };
        match v {
            Some((_, vals)) => a.default_values(vals.clone()).required(false),
            None => a,
        }
    });
    cmd.mut_subcommands(|sc| set_defaults(sc, values))
}

/// The markdown table of `cmd`'s keys (docs/config.md holds one per binary; a test in each
/// binary checks it is current). One row per key: environment variable, default, the
/// subcommands that take it (for `tessera`), and its help text.
pub fn doc_table(cmd: &Command) -> String {
    let mut rows: Vec<(String, Vec<String>, String, Vec<String>, String)> = Vec::new();
    collect_rows(cmd, "", &mut rows);
    let subcommands = cmd.has_subcommands();
    let mut out = String::from(if subcommands { "| key | environment | default | commands | meaning |\n|---|---|---|---|---|\n" } else { "| key | environment | default | meaning |\n|---|---|---|---|\n" });
    for (key, envs, default, cmds, help) in rows {
        let envs = envs.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ");
        if subcommands {
            out += &format!("| `{key}` | {envs} | {default} | {} | {help} |\n", cmds.join(", "));
        } else {
            out += &format!("| `{key}` | {envs} | {default} | {help} |\n");
        }
    }
    out
}

fn collect_rows(cmd: &Command, path: &str, rows: &mut Vec<(String, Vec<String>, String, Vec<String>, String)>) {
    for a in cmd.get_arguments().filter(|a| configurable(a)) {
        let key = a.get_long().unwrap_or_default().to_string();
        let env = a.get_env().unwrap_or_default().to_string_lossy().into_owned();
        let defaults: Vec<String> = a.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
        let default = match (defaults.is_empty(), a.is_required_set()) {
            (false, _) => format!("`{}`", defaults.join(",")),
            (true, true) => "required".to_string(),
            // A flag's implicit default, which clap adds only when it builds the command.
            (true, false) if !takes_values(a) => "`false`".to_string(),
            (true, false) => "–".to_string(),
        };
        let help = a.get_help().map(|h| h.to_string().replace('|', "\\|")).unwrap_or_default();
        match rows.iter_mut().find(|r| r.0 == key) {
            Some(r) => {
                if !r.1.contains(&env) {
                    r.1.push(env);
                }
                r.3.push(path.to_string());
            }
            None => rows.push((key, vec![env], default, vec![path.to_string()], help)),
        }
    }
    for sc in cmd.get_subcommands() {
        let p = if path.is_empty() { sc.get_name().to_string() } else { format!("{path} {}", sc.get_name()) };
        collect_rows(sc, &p, rows);
    }
}

/// Panic unless `doc` (docs/config.md) holds `cmd`'s current key table; the message carries the
/// table to paste.
pub fn assert_documented(cmd: &Command, doc: &str) {
    let table = doc_table(cmd);
    assert!(doc.contains(&table), "docs/config.md does not hold the current key table of {}; replace it with:\n\n{table}", cmd.get_name());
}

/// The test each binary carries for its clap type `$cli`: the flags are consistent and
/// docs/config.md holds their current table.
#[macro_export]
macro_rules! config_docs_test {
    ($cli:ident) => {
        #[cfg(test)]
        mod config_docs {
            #[test]
            fn docs_config_md_lists_every_key() {
                let cmd = <super::$cli as clap::CommandFactory>::command();
                cmd.clone().debug_assert();
                $crate::config::assert_documented(&cmd, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")));
            }
        }
    };
}

#[cfg(test)]
mod tests;
