//! The GitHub workflows, read as text (actionlint checks their syntax in scripts/check-infra.sh):
//! every action pinned by full commit SHA with its version beside it, no permission granted by
//! default, a plan that forks never run and that posts no values, and a rollback that deploys
//! only what main built.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

fn workflows() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.github/workflows");
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files
}

#[test]
fn every_action_is_pinned_by_commit_sha_with_its_version() {
    let mut seen = 0;
    for (path, text) in workflows() {
        for line in text.lines().filter(|l| {
            l.trim_start().starts_with("- uses:") || l.trim_start().starts_with("uses:")
        }) {
            let spec = line.split("uses:").nth(1).unwrap().trim();
            let (action, rest) = spec
                .split_once('@')
                .unwrap_or_else(|| panic!("{}: {line}", path.display()));
            let (sha, comment) = rest.split_once(" # ").unwrap_or((rest, ""));
            assert!(
                sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{}: {action} is not pinned by a full commit SHA: {line}",
                path.display()
            );
            assert!(
                comment.trim().starts_with('v'),
                "{}: {action} names no version: {line}",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 10, "{seen} actions");
}

#[test]
fn no_workflow_grants_a_permission_by_default_and_each_job_names_its_own() {
    for (path, text) in workflows() {
        assert!(
            text.lines().any(|l| l == "permissions: {}"),
            "{}: the workflow's default permissions are not empty",
            path.display()
        );
        // Each job (two-space indented key under `jobs:`) has a `permissions:` block.
        let jobs = text.split("\njobs:\n").nth(1).unwrap();
        let mut job_blocks: Vec<String> = Vec::new();
        for line in jobs.lines() {
            if line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':')
            {
                job_blocks.push(String::new());
            }
            if let Some(job) = job_blocks.last_mut() {
                job.push_str(line);
                job.push('\n');
            }
        }
        assert!(!job_blocks.is_empty());
        for job in &job_blocks {
            assert!(
                job.contains("\n    permissions:\n"),
                "{}: a job without permissions:\n{job}",
                path.display()
            );
            assert!(
                !job.contains("write-all") && !job.contains("contents: write"),
                "{}: {job}",
                path.display()
            );
        }
    }
}

#[test]
fn the_plan_never_runs_for_a_fork_nor_posts_values_and_a_rollback_takes_only_mains_artifacts() {
    let (_, deploy) = workflows()
        .into_iter()
        .find(|(p, _)| p.ends_with("deploy.yml"))
        .unwrap();
    assert!(deploy.contains("github.event.pull_request.head.repo.full_name == github.repository"));
    // The posted plan is the list of changed addresses, never `terraform show` text.
    assert!(deploy.contains("terraform show -json tfplan"));
    assert!(!deploy.contains("terraform show -no-color tfplan"));
    assert!(deploy.contains(".resource_changes[]"));
    // The rollback's check, before each download from another run.
    assert_eq!(
        deploy
            .matches("Check the rollback's artifact was built by main")
            .count(),
        2
    );
    assert!(deploy.contains(r#"".github/workflows/deploy.yml main push""#));
    // Applies run from main only.
    assert_eq!(deploy.matches("github.ref == 'refs/heads/main'").count(), 2);
    // Each AWS role comes from its environment's own secrets: plan in dev-plan, applies in
    // dev and prod.
    assert!(
        deploy.contains("environment: dev-plan") && deploy.contains("secrets.AWS_PLAN_ROLE_ARN")
    );
    assert!(deploy.contains("environment: dev\n") && deploy.contains("environment: prod\n"));
    // The SBOM is built with the zips.
    assert!(deploy.contains("cargo cyclonedx") && deploy.contains("name: sbom"));
}

/// deny.toml, which `scripts/test.sh` checks every dependency against: permissive licenses
/// only, crates.io only, one TLS stack; and the test run and GitHub CI both run it.
#[test]
fn the_dependency_policy_is_permissive_licenses_crates_io_and_one_tls_stack() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let deny = std::fs::read_to_string(root.join("deny.toml")).unwrap();
    let allowed = deny
        .split("allow = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap();
    for copyleft in ["GPL", "AGPL", "LGPL", "MPL", "EUPL", "SSPL"] {
        assert!(
            !allowed.contains(copyleft),
            "{copyleft} is allowed: {allowed}"
        );
    }
    assert!(
        deny.contains("unknown-git = \"deny\"") && deny.contains("unknown-registry = \"deny\"")
    );
    assert!(deny.contains("name = \"openssl-sys\""));
    assert!(deny.contains("yanked = \"deny\"") && deny.contains("unmaintained = \"all\""));
    let script = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
    assert!(
        script.contains("check licenses bans sources"),
        "scripts/test.sh does not run cargo deny"
    );
    let (_, ci) = workflows()
        .into_iter()
        .find(|(p, _)| p.ends_with("ci.yml"))
        .unwrap();
    assert!(
        ci.contains("check advisories"),
        "GitHub CI does not check advisories"
    );
}
