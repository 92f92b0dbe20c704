use super::*;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "demo")]
struct Demo {
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where data lives.
    #[arg(long, env = "DEMO_TEST_DATA_DIR")]
    data_dir: PathBuf,
    /// Copies.
    #[arg(long, env = "DEMO_TEST_REPLICAS", default_value_t = 3)]
    replicas: u32,
    #[arg(long, env = "DEMO_TEST_FOREGROUND")]
    foreground: bool,
    #[arg(short = 'o', long = "options", env = "DEMO_TEST_OPTIONS")]
    options: Vec<String>,
    /// A one-off action: no environment variable, so not settable from a file.
    #[arg(long)]
    restore: Option<PathBuf>,
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn parse_with<T: Parser>(f: &tempfile::NamedTempFile, args: &[&str]) -> Result<T, String> {
    let mut argv: Vec<OsString> = vec!["demo".into(), "--config".into(), f.path().into()];
    argv.extend(args.iter().map(OsString::from));
    let cmd = layer(T::command(), &argv).map_err(|e| e.to_string())?;
    let m = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    T::from_arg_matches(&m).map_err(|e| e.to_string())
}

#[test]
fn the_file_fills_in_what_the_command_line_leaves_out() {
    let f = file("data-dir = \"/srv/a\"\nreplicas = 2\nforeground = true\noptions = [\"noatime\", \"ro\"]\n");
    let d: Demo = parse_with(&f, &[]).unwrap();
    assert_eq!((d.data_dir, d.replicas, d.foreground, d.options), (PathBuf::from("/srv/a"), 2, true, vec!["noatime".to_string(), "ro".to_string()]));
}

#[test]
fn a_flag_overrides_the_file() {
    let f = file("data-dir = \"/srv/a\"\nreplicas = 2\n");
    let d: Demo = parse_with(&f, &["--replicas", "5", "--data-dir=/srv/b"]).unwrap();
    assert_eq!((d.data_dir, d.replicas), (PathBuf::from("/srv/b"), 5));
    // A list too is replaced, not extended.
    let f = file("data-dir = \"/srv/a\"\noptions = [\"noatime\", \"nodev\"]\n");
    let d: Demo = parse_with(&f, &["-o", "ro"]).unwrap();
    assert_eq!(d.options, vec!["ro".to_string()]);
}

#[test]
fn the_environment_overrides_the_file_and_a_flag_the_environment() {
    // Only this test sets DEMO_TEST_REPLICAS (tests run as threads of one process).
    std::env::set_var("DEMO_TEST_REPLICAS", "4");
    let f = file("data-dir = \"/srv/a\"\nreplicas = 2\n");
    let from_env: Result<Demo, _> = parse_with(&f, &[]);
    let from_flag: Result<Demo, _> = parse_with(&f, &["--replicas", "6"]);
    std::env::remove_var("DEMO_TEST_REPLICAS");
    assert_eq!(from_env.unwrap().replicas, 4);
    assert_eq!(from_flag.unwrap().replicas, 6);
}

#[test]
fn the_built_in_default_applies_when_nothing_sets_a_key() {
    let f = file("data-dir = \"/srv/a\"\n");
    let d: Demo = parse_with(&f, &[]).unwrap();
    assert_eq!((d.replicas, d.foreground, d.options.len()), (3, false, 0));
}

#[test]
fn bad_keys_and_values_are_refused_naming_the_key_and_file() {
    let cases = [
        ("data-dri = \"/x\"\n", "unknown key 'data-dri' (docs/config.md lists the keys)"),
        ("data_dir = \"/x\"\n", "unknown key 'data_dir' (did you mean 'data-dir'? keys are the long flag names)"),
        ("restore = \"/x\"\n", "key 'restore': --restore can only be given on the command line"),
        ("replicas = \"three\"\n", "key 'replicas': invalid value 'three' for '--replicas <REPLICAS>'"),
        ("replicas = [1, 2]\n", "key 'replicas': expects one value, not a list"),
        ("foreground = \"yes\"\n", "key 'foreground': expects true or false"),
        ("[data-dir]\nx = 1\n", "key 'data-dir': expects a value, not a table"),
        ("replicas = 3\nreplicas = 4\n", "line 2, column 1: duplicate key"),
        ("replicas = \n", "line 1, column 12: "),
    ];
    for (text, want) in cases {
        let f = file(text);
        let e = parse_with::<Demo>(&f, &["--data-dir", "/y"]).unwrap_err();
        let path = f.path().display().to_string();
        assert!(e.starts_with(&format!("{path}: ")), "{text:?}: {e}");
        assert!(e.contains(want), "{text:?}: wanted {want:?} in {e:?}");
        assert_eq!(e.lines().count(), 1, "{text:?}: {e}");
    }
}

#[test]
fn a_missing_file_is_refused_naming_it() {
    let argv: Vec<OsString> = ["demo", "--config=/nonexistent/demo.toml"].iter().map(OsString::from).collect();
    let e = layer(Demo::command(), &argv).unwrap_err().to_string();
    assert!(e.starts_with("cannot read config file /nonexistent/demo.toml: "), "{e}");
}

#[test]
fn no_config_flag_leaves_the_command_as_it_was() {
    let argv: Vec<OsString> = ["demo", "--data-dir", "/a", "--", "--config"].iter().map(OsString::from).collect();
    assert_eq!(config_path(&argv), None);
    assert!(layer(Demo::command(), &argv).is_ok());
}

#[derive(Parser)]
#[command(name = "tool")]
struct Tool {
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: ToolCmd,
}

#[derive(Subcommand)]
enum ToolCmd {
    Mount {
        #[arg(long, env = "TOOL_TEST_META")]
        meta: String,
        #[arg(long, env = "TOOL_TEST_FOREGROUND")]
        foreground: bool,
    },
    Status {
        #[arg(long, env = "TOOL_TEST_META")]
        meta: String,
        #[arg(long)]
        json: bool,
    },
}

#[test]
fn a_key_applies_to_every_subcommand_that_takes_it() {
    let f = file("meta = \"10.0.0.2:7100\"\nforeground = true\n");
    let Tool { cmd: ToolCmd::Status { meta, json }, .. } = parse_with::<Tool>(&f, &["status"]).unwrap() else { panic!("not status") };
    assert_eq!((meta.as_str(), json), ("10.0.0.2:7100", false));
    let Tool { cmd: ToolCmd::Mount { meta, foreground }, .. } = parse_with::<Tool>(&f, &["mount", "--meta", "h:1"]).unwrap() else { panic!("not mount") };
    assert_eq!((meta.as_str(), foreground), ("h:1", true));
    let e = parse_with::<Tool>(&file("json = true\n"), &["status"]).map(|_| ()).unwrap_err();
    assert!(e.contains("key 'json': --json can only be given on the command line"), "{e}");
}

#[test]
fn the_doc_table_lists_configurable_keys_only() {
    let t = doc_table(&Demo::command());
    assert!(t.contains("| `data-dir` | `DEMO_TEST_DATA_DIR` | required | Where data lives |"), "{t}");
    assert!(t.contains("| `replicas` | `DEMO_TEST_REPLICAS` | `3` | Copies |"), "{t}");
    assert!(t.contains("| `foreground` | `DEMO_TEST_FOREGROUND` | `false` |"), "{t}");
    assert!(!t.contains("restore") && !t.contains("`config`"), "{t}");
    let t = doc_table(&Tool::command());
    assert!(t.contains("| `meta` | `TOOL_TEST_META` | required | mount, status |"), "{t}");
}
