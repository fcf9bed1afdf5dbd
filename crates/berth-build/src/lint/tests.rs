use super::*;

fn run(src: &str) -> CheckReport {
    check(src, "Dockerfile", &BTreeMap::new())
}

fn rules(src: &str) -> Vec<String> {
    run(src).findings.into_iter().map(|f| f.rule).collect()
}

fn clean(src: &str) {
    let r = run(src);
    assert!(r.findings.is_empty(), "{}\n{src}", r.render());
}

#[test]
fn clean_files() {
    clean("FROM alpine:3.20\nRUN echo hi\nCMD [\"sh\"]\n");
    clean("ARG VERSION=3.20\nFROM alpine:${VERSION}\nARG VERSION\nENV V=$VERSION\nLABEL v=$V\n");
    clean("FROM alpine AS build\nRUN touch /x\nFROM scratch\nCOPY --from=build /x /x\n");
    clean("FROM busybox\nENV PATH=/app/bin:$PATH\nWORKDIR /app\nWORKDIR sub\n");
    clean("FROM alpine\nFROM scratch\nCOPY --from=0 /a /b\n");
}

#[test]
fn casing_rules() {
    let r = run("FROM alpine as Build\nRUN x\n");
    assert_eq!(r.rule("FromAsCasing").len(), 1);
    assert_eq!(
        r.rule("FromAsCasing")[0].message,
        "'as' and 'FROM' keywords' casing do not match"
    );
    assert_eq!(
        r.rule("StageNameCasing")[0].message,
        "Stage name 'Build' should be lowercase"
    );
    let r = run("FROM alpine\nrun x\nCOPY a b\n");
    let f = r.rule("ConsistentInstructionCasing");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].line, 2);
    assert_eq!(
        f[0].message,
        "Command 'run' should match the case of the command majority (uppercase)"
    );
    let r = run("from alpine\nrun x\nCopy a b\n");
    assert_eq!(r.rule("ConsistentInstructionCasing")[0].line, 3);
    assert!(r.rule("ConsistentInstructionCasing")[0]
        .message
        .contains("lowercase"));
    assert!(!rules("from alpine as build\nrun x\n").contains(&"FromAsCasing".to_string()));
}

#[test]
fn stage_rules() {
    let r = run("FROM a AS x\nFROM b AS X\n");
    assert_eq!(r.rule("DuplicateStageName").len(), 1);
    assert_eq!(r.rule("DuplicateStageName")[0].line, 2);
    assert_eq!(r.rule("ReservedStageName").len(), 0);
    let r = run("FROM a AS scratch\nFROM b AS context\n");
    assert_eq!(r.rule("ReservedStageName").len(), 2);
}

#[test]
fn instruction_rules() {
    let r = run("FROM a\nMAINTAINER me\nCMD echo hi\nENTRYPOINT run\n");
    assert_eq!(r.rule("MaintainerDeprecated").len(), 1);
    let json = r.rule("JSONArgsRecommended");
    assert_eq!(json.len(), 2);
    assert_eq!(
        json[0].message,
        "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals"
    );
    // Single quotes are not JSON: shell form, so the rule fires.
    assert_eq!(
        run("FROM a\nCMD ['a', 'b']\n")
            .rule("JSONArgsRecommended")
            .len(),
        1
    );
    let r = run("FROM a\nCMD [\"a\"]\nCMD [\"b\"]\nHEALTHCHECK NONE\nHEALTHCHECK CMD x\nENTRYPOINT [\"e\"]\nFROM b\nCMD [\"c\"]\n");
    let multi = r.rule("MultipleInstructionsDisallowed");
    assert_eq!(multi.len(), 2);
    assert_eq!(multi.iter().map(|f| f.line).collect::<Vec<_>>(), vec![2, 4]);
    let r = run("FROM a\nENV k v\nLABEL a b\nENV ok=1\n");
    assert_eq!(r.rule("LegacyKeyValueFormat").len(), 2);
    let r = run("FROM a\nWORKDIR app\nWORKDIR more\n");
    assert_eq!(r.rule("WorkdirRelativePath").len(), 1);
    assert_eq!(
        r.rule("WorkdirRelativePath")[0].message,
        "Relative workdir \"app\" can have unexpected results if the base image changes"
    );
    let r = run("FROM a\nARG API_KEY\nENV DB_PASSWORD=x\nARG PUBLIC_KEY\nENV KEYBOARD=us\n");
    let s = r.rule("SecretsUsedInArgOrEnv");
    assert_eq!(s.len(), 2, "{}", r.render());
    assert!(s[0].message.contains("(ARG \"API_KEY\")"));
    let r = run("FROM a\nEXPOSE 80:80 53/UDP 443/tcp\n");
    assert_eq!(r.rule("ExposeInvalidFormat").len(), 1);
    assert_eq!(r.rule("ExposeProtoCasing").len(), 1);
    let r = run("FROM a\nRUN a \\\n\n  b\n");
    assert_eq!(r.rule("NoEmptyContinuation").len(), 1);
}

#[test]
fn from_platform_rules() {
    let r = run("FROM --platform=$TARGETPLATFORM a\n");
    assert_eq!(r.rule("RedundantTargetPlatform").len(), 1);
    let r = run("FROM --platform=linux/amd64 a\n");
    assert_eq!(r.rule("FromPlatformFlagConstDisallowed").len(), 1);
    clean("FROM --platform=linux/amd64 a AS build-amd64\n");
    clean("FROM --platform=$BUILDPLATFORM a\n");
}

#[test]
fn variable_rules() {
    let r = run("FROM alpine:$VERSION\n");
    assert_eq!(
        r.rule("UndefinedArgInFrom")[0].message,
        "FROM argument 'VERSION' is not declared"
    );
    // Platform args are predefined for FROM.
    clean("FROM --platform=$BUILDPLATFORM golang:1.22-${TARGETOS}\n");
    let r = run("ARG TAG\nFROM alpine:${TAG}\n");
    assert_eq!(r.rule("InvalidDefaultArgInFrom").len(), 1);
    assert_eq!(r.rule("UndefinedArgInFrom").len(), 0);
    clean("ARG TAG=3\nFROM alpine:${TAG}\n");
    clean("ARG IMG=alpine\nFROM ${IMG}\n");
    // Build args make the base valid, but the default alone is still reported.
    let args: BTreeMap<String, String> = [("TAG".to_string(), "3".to_string())].into();
    let r = check("ARG TAG\nFROM alpine:${TAG}\n", "Dockerfile", &args);
    assert_eq!(r.rule("InvalidDefaultArgInFrom").len(), 1);

    let r = run("FROM scratch\nARG foo\nCOPY $foo $fooo /dst\nENV A=$missing\n");
    let u = r.rule("UndefinedVar");
    assert_eq!(u.len(), 2, "{}", r.render());
    assert_eq!(
        u[0].message,
        "Usage of undefined variable '$fooo' (did you mean $foo?)"
    );
    assert_eq!(u[1].message, "Usage of undefined variable '$missing'");
    // Global ARGs are not visible in a stage until redeclared.
    let r = run("ARG G=1\nFROM scratch\nENV X=$G\n");
    assert_eq!(r.rule("UndefinedVar").len(), 1);
    clean("ARG G=1\nFROM scratch\nARG G\nENV X=$G\n");
    // RUN and CMD are not substituted by Docker: no finding.
    clean("FROM scratch\nRUN echo $nothing\nCMD [\"$x\"]\n");
    // Escaped and single-quoted dollars are literal.
    clean("FROM scratch\nENV A=\\$x B='$y'\n");
    // PATH of a base image.
    clean("FROM debian\nENV PATH=/x:$PATH\n");
    // Proxy args are predefined.
    clean("FROM debian\nENV P=$HTTP_PROXY\n");
    // Bad substitution syntax is an error.
    let r = run("FROM scratch\nENV A=${x\n");
    assert_eq!(r.errors(), 1);
}

#[test]
fn check_directive() {
    let r =
        run("# check=skip=JSONArgsRecommended,MaintainerDeprecated\nFROM a\nCMD x\nMAINTAINER m\n");
    assert!(r.findings.is_empty());
    let r = run("# check=error=true\nFROM a\nCMD x\n");
    assert_eq!(r.errors(), 0);
    assert!(r.failed());
    let r = run("# check=skip=all\nFROM a\nCMD x\n");
    assert!(r.findings.is_empty());
}

#[test]
fn hard_errors() {
    let r = run("FROM a\nFROB x\nRUN y\nBAD z\n");
    assert_eq!(r.errors(), 2);
    assert_eq!(r.findings[0].rule, "UnknownInstruction");
    assert_eq!(
        r.findings[0].to_string(),
        "ERROR: Dockerfile:2:1: unknown instruction: FROB (did you mean from?)"
    );
    assert_eq!(run("RUN x\nFROM a\n").rule("NoStage").len(), 1);
    assert_eq!(run("ARG A=1\n").rule("NoStage").len(), 1);
    let r = run("FROM a AS one\nCOPY --from=two /x /x\nFROM b AS two\nCOPY --from=one /y /y\n");
    let c = r.rule("CircularDependency");
    assert_eq!(c.len(), 1, "{}", r.render());
    assert!(c[0]
        .message
        .starts_with("circular dependency detected on stage"));
    let r = run("FROM a AS self\nCOPY --from=self /x /x\n");
    assert_eq!(r.rule("CircularDependency").len(), 1);
    // Forward references without a cycle are fine.
    clean("FROM a AS one\nCOPY --from=two /x /x\nFROM b AS two\nRUN x\n");
    // Indexes must name an earlier stage.
    assert_eq!(
        run("FROM a\nCOPY --from=0 /x /y\n")
            .rule("UnknownStage")
            .len(),
        1
    );
    assert_eq!(
        run("FROM a\nFROM b\nCOPY --from=5 /x /y\n")
            .rule("UnknownStage")
            .len(),
        1
    );
    // A name that is not a stage is an image reference, as in Docker; an invalid one is an error.
    clean("FROM a\nCOPY --from=nginx:latest /etc/nginx /etc/nginx\n");
    assert_eq!(
        run("FROM a\nCOPY --from=Not_A/Ref! /x /y\n")
            .rule("UnknownStage")
            .len(),
        1
    );
    // RUN --mount from= is a stage reference too.
    let r = run("FROM a AS one\nRUN --mount=type=bind,from=two,target=/t x\nFROM b AS two\nCOPY --from=one /y /y\n");
    assert_eq!(r.rule("CircularDependency").len(), 1);
    assert_eq!(run("FROM Bad/Ref\n").rule("InvalidReference").len(), 1);
    assert!(run("FROM a\nRUN <<EOF\nx\n").failed());
    assert!(run("").failed());
}

#[test]
fn render_format() {
    let r = run("FROM a as b\nCMD x\n");
    assert_eq!(
        r.render(),
        "WARNING: FromAsCasing - 'as' and 'FROM' keywords' casing do not match (line 1)\n\
         WARNING: JSONArgsRecommended - JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)\n\
         Check complete, 2 warnings found!\n"
    );
    assert_eq!(
        run("FROM a\n").render(),
        "Check complete, no warnings found.\n"
    );
    assert!(!run("FROM a\nCMD x\n").failed());
}

/// Real-world shapes lint clean.
#[test]
fn corpus_is_clean() {
    clean(
        r#"# syntax=docker/dockerfile:1
ARG RUST_VERSION=1.85
FROM rust:${RUST_VERSION}-slim AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry cargo build --release

FROM debian:bookworm-slim
COPY --from=build /src/target/release/app /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]
"#,
    );
    clean(
        r#"FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
HEALTHCHECK --interval=30s CMD ["python", "-m", "healthcheck"]
CMD ["python", "app.py"]
"#,
    );
    clean("FROM alpine\nCOPY <<EOF /etc/app.conf\nkey=$value\nEOF\nRUN <<-'EOT' sh\n\techo $HOME\n\tEOT\n");
    clean("# escape=`\nFROM mcr.microsoft.com/windows/servercore:ltsc2022\nSHELL [\"powershell\"]\nRUN Write-Host a; `\n  Write-Host b\n");
    clean("FROM node:20\nONBUILD COPY . /app\nONBUILD RUN npm ci\n");
}
