//! `berth build --check`: parse and lint Dockerfiles without building.

mod common;

use common::{context, Berth};

fn check(b: &Berth, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["build", "--check"];
    all.extend_from_slice(args);
    let out = b.run(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn clean_dockerfile_passes() {
    let b = Berth::empty();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox AS build\nRUN echo hi > /x\nFROM scratch\nCOPY --from=build /x /x\nCMD [\"/x\"]\n",
    )]);
    let (code, out, err) = check(&b, &[ctx.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "Check complete, no warnings found.\n");
}

#[test]
fn warnings_are_printed_and_do_not_fail() {
    let b = Berth::empty();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox as Build\nMAINTAINER me\nCMD echo hi\n",
    )]);
    let (code, out, _) = check(&b, &[ctx.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(
        "WARNING: FromAsCasing - 'as' and 'FROM' keywords' casing do not match (line 1)"
    ));
    assert!(
        out.contains("WARNING: StageNameCasing - Stage name 'Build' should be lowercase (line 1)")
    );
    assert!(out.contains("WARNING: MaintainerDeprecated"));
    assert!(out.contains("WARNING: JSONArgsRecommended"));
    assert!(out.contains("Check complete, 4 warnings found!"), "{out}");
}

#[test]
fn errors_fail_with_file_line_column() {
    let b = Berth::empty();
    let ctx = context(&[(
        "app.Dockerfile",
        "FROM busybox\n  RUNN echo\nFROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n",
    )]);
    let file = ctx.path().join("app.Dockerfile");
    let (code, out, _) = check(
        &b,
        &["-f", file.to_str().unwrap(), ctx.path().to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ERROR: app.Dockerfile:2:3: unknown instruction: RUNN (did you mean run?)"),
        "{out}"
    );
    assert!(
        out.contains("circular dependency detected on stage"),
        "{out}"
    );
}

#[test]
fn dockerfile_from_stdin() {
    let b = Berth::empty();
    let ctx = context(&[]);
    let out = common::output_with_stdin(
        &mut b.cmd(&["build", "--check", "-f", "-", ctx.path().to_str().unwrap()]),
        b"FROM busybox\nWORKDIR app\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("WARNING: WorkdirRelativePath"), "{stdout}");
}

#[test]
fn bad_input() {
    let b = Berth::empty();
    let ctx = context(&[("Dockerfile", "# just a comment\n")]);
    let path = ctx.path().to_str().unwrap();
    let (code, out, _) = check(&b, &[path]);
    assert_eq!(code, 1, "{out}");
    // Missing Dockerfile, missing context.
    let empty = context(&[]);
    let (code, _, err) = check(&b, &[empty.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("Dockerfile"), "{err}");
    let (code, _, err) = check(&b, &["/nonexistent-context-dir"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}
