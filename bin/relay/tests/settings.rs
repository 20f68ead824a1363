//! One configuration surface: every setting of `relay up` (as its `--help` lists it) is either
//! set on AWS by Terraform, from a module variable with the flag's default, or listed in
//! docs/configuration.md as local only, with the reason; and Terraform sets no `RELAY_*`
//! variable that `relay up` does not have. A setting added to one backend and not the other
//! fails here.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// `relay up --help`'s settings: variable → (flag, default).
fn up_settings() -> BTreeMap<String, (String, Option<String>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["up", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut settings = BTreeMap::new();
    let mut flag = None;
    let mut env: Option<String> = None;
    let mut default = None;
    let mut flush =
        |flag: &mut Option<String>, env: &mut Option<String>, default: &mut Option<String>| {
            if let (Some(f), Some(e)) = (flag.take(), env.take()) {
                settings.insert(e, (f, default.take()));
            }
            *default = None;
        };
    for line in help.lines() {
        let trimmed = line.trim_start();
        if line.starts_with("      --") {
            flush(&mut flag, &mut env, &mut default);
            flag = trimmed.split([' ', '=']).next().map(str::to_owned);
        } else if let Some(rest) = trimmed.strip_prefix("[env: ") {
            env = rest.split(['=', ']']).next().map(str::to_owned);
        } else if let Some(rest) = trimmed.strip_prefix("[default: ") {
            default = rest.strip_suffix(']').map(str::to_owned);
        }
    }
    flush(&mut flag, &mut env, &mut default);
    settings.retain(|env, _| env.starts_with("RELAY_"));
    settings
}

/// docs/configuration.md's table of `relay up`'s settings: variable → its "On AWS" cell.
fn documented() -> BTreeMap<String, String> {
    read("docs/configuration.md")
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[2].trim_matches('`').to_owned(), cells[4].to_owned())
        })
        .collect()
}

/// What `functions.tf` sets: `RELAY_X` → the right-hand side, as written.
fn terraform_sets() -> BTreeMap<String, String> {
    let hcl = read("terraform/modules/relay/functions.tf");
    let mut set = BTreeMap::new();
    for (at, _) in hcl.match_indices("RELAY_") {
        let rest = &hcl[at..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        let after = rest[name_len..].trim_start_matches(' ');
        if let Some(value) = after.strip_prefix('=').filter(|v| !v.starts_with('=')) {
            let value = value.split(['\n', '}']).next().unwrap_or_default().trim();
            set.insert(rest[..name_len].to_owned(), value.to_owned());
        }
    }
    set
}

/// A module variable, if declared: its default as written (`"24h"` → `24h`), if any.
fn terraform_variable(variable: &str) -> Option<Option<String>> {
    let hcl = read("terraform/modules/relay/variables.tf");
    let start = hcl.find(&format!("variable \"{variable}\" {{"))?;
    let block = &hcl[start..];
    let block = &block[..block.find("\n}").unwrap_or(block.len())];
    Some(
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix("default"))
            .map(|d| {
                d.trim_start_matches([' ', '='])
                    .trim()
                    .trim_matches('"')
                    .to_owned()
            }),
    )
}

#[test]
fn every_setting_of_relay_up_is_settable_on_aws_or_local_only_with_a_reason() {
    let settings = up_settings();
    assert!(settings.len() > 30, "the help was read: {settings:?}");
    let documented = documented();
    let terraform = terraform_sets();
    for (env, (flag, default)) in &settings {
        let cell = documented
            .get(env)
            .unwrap_or_else(|| panic!("{flag} ({env}) has no row in docs/configuration.md"));
        if let Some(reason) = cell.strip_prefix("local only:") {
            assert!(
                reason.trim().len() > 10,
                "{env}: local only needs its reason"
            );
            assert!(
                !terraform.contains_key(env),
                "{env} is documented as local only, but Terraform sets it"
            );
            continue;
        }
        let value = terraform
            .get(env)
            .unwrap_or_else(|| panic!("{env} is not local only, but Terraform does not set it"));
        // A row that names a module variable: Terraform sets the setting from it, and the
        // variable's default is the flag's.
        if let Some(variable) = cell.strip_prefix('`').and_then(|c| c.split('`').next()) {
            assert!(
                value.contains(&format!("var.{variable}")),
                "{env} = {value}, not from var.{variable}"
            );
            let tf_default = terraform_variable(variable)
                .unwrap_or_else(|| panic!("variable {variable} is not declared"));
            // (The document's default is multi-line in the help; Terraform's empty means it.)
            if let (Some(tf), Some(flag_default)) = (tf_default, default.as_deref())
                && !flag_default.starts_with('"')
            {
                assert_eq!(
                    tf, flag_default,
                    "{variable}'s default differs from {flag}'s"
                );
            }
        }
    }
    for env in terraform.keys() {
        assert!(
            settings.contains_key(env),
            "Terraform sets {env}, which is no setting of relay up: the backends drifted"
        );
    }
}
