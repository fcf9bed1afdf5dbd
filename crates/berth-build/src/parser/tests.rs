use super::*;

fn one(src: &str) -> Instruction {
    let df = parse(src).unwrap();
    assert_eq!(df.instructions.len(), 1, "{src}");
    df.instructions.into_iter().next().unwrap()
}

fn err(src: &str) -> ParseError {
    parse(src).unwrap_err()
}

#[test]
fn directives() {
    let df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\n").unwrap();
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(df.directives.escape, '`');
    // A directive after a comment is an ordinary comment.
    let df = parse("# hello\n# escape=`\nFROM scratch\n").unwrap();
    assert_eq!(df.directives.escape, '\\');
    // Directive keys are case-insensitive, blanks allowed.
    let df = parse("#  ESCAPE = `\nFROM scratch\n").unwrap();
    assert_eq!(df.directives.escape, '`');
    assert!(err("# escape=x\nFROM scratch\n")
        .message
        .contains("invalid escape token"));
    assert!(err("# escape=`\n# escape=\\\nFROM scratch\n")
        .message
        .contains("only one escape"));
    let df = parse("# check=skip=JSONArgsRecommended\nFROM scratch\n").unwrap();
    assert_eq!(
        df.directives.check.as_deref(),
        Some("skip=JSONArgsRecommended")
    );
}

#[test]
fn continuations_comments_and_blank_lines() {
    let src = "FROM alpine\nRUN apk add \\\n    # a comment inside\n    curl \\\n\n    git\n";
    let df = parse(src).unwrap();
    let run = &df.instructions[1];
    assert_eq!(run.line, 2);
    assert_eq!(run.end_line, 6);
    assert_eq!(
        run.command,
        Command::Run(CommandLine::Shell("apk add     curl     git".into()))
    );
    assert_eq!(df.empty_continuations, vec![2]);
    // Backtick escape: backslashes are literal, backtick continues.
    let df = parse("# escape=`\nFROM mcr/windows\nRUN dir c:\\ `\n  && echo x\n").unwrap();
    assert_eq!(
        df.instructions[1].command,
        Command::Run(CommandLine::Shell("dir c:\\   && echo x".into()))
    );
    // Trailing blanks after the escape still continue; CRLF files parse.
    let df = parse("FROM a\r\nRUN a \\  \r\n b\r\n").unwrap();
    assert_eq!(
        df.instructions[1].command,
        Command::Run(CommandLine::Shell("a  b".into()))
    );
    // Indented instructions carry their column.
    let df = parse("FROM a\n   RUN x\n").unwrap();
    assert_eq!(df.instructions[1].column, 4);
}

#[test]
fn from_forms() {
    let i = one("FROM --platform=$BUILDPLATFORM golang:1.22 AS build");
    assert_eq!(i.flag("platform"), Some(Some("$BUILDPLATFORM")));
    assert_eq!(
        i.command,
        Command::From {
            image: "golang:1.22".into(),
            name: Some("build".into()),
            as_keyword: Some("AS".into())
        }
    );
    assert!(err("FROM a AS").message.contains("one or three"));
    assert!(err("FROM a BS b").message.contains("one or three"));
    assert!(err("FROM a AS 1bad")
        .message
        .contains("invalid name for build stage"));
    assert!(err("FROM --plat=x a")
        .message
        .contains("unknown flag: plat"));
}

#[test]
fn exec_and_shell_forms() {
    assert_eq!(
        one(r#"CMD ["nginx", "-g", "daemon off;"]"#).command,
        Command::Cmd(CommandLine::Exec(vec![
            "nginx".into(),
            "-g".into(),
            "daemon off;".into()
        ]))
    );
    // Invalid JSON falls back to shell form, exactly as Docker.
    assert_eq!(
        one("CMD ['nginx']").command,
        Command::Cmd(CommandLine::Shell("['nginx']".into()))
    );
    assert_eq!(
        one(r#"ENTRYPOINT ["a", 1]"#).command,
        Command::Entrypoint(CommandLine::Shell(r#"["a", 1]"#.into()))
    );
    assert_eq!(
        one(r#"ENTRYPOINT ["a",]"#).command,
        Command::Entrypoint(CommandLine::Shell(r#"["a",]"#.into()))
    );
    assert_eq!(
        one("RUN [ \"echo\" , \"x\" ]").command,
        Command::Run(CommandLine::Exec(vec!["echo".into(), "x".into()]))
    );
    assert_eq!(
        one("CMD").command,
        Command::Cmd(CommandLine::Shell("".into()))
    );
}

#[test]
fn run_flags() {
    let i = one("RUN --mount=type=cache,target=/root/.cargo/registry --network=none cargo build");
    assert_eq!(i.flags.len(), 2);
    assert_eq!(
        i.flag("mount"),
        Some(Some("type=cache,target=/root/.cargo/registry"))
    );
    assert_eq!(
        i.command,
        Command::Run(CommandLine::Shell("cargo build".into()))
    );
    one("RUN --mount=type=bind,from=build,source=/out,target=/in ls /in");
    one("RUN --mount=type=secret,id=npm npm ci");
    one("RUN --security=insecure x");
    assert!(err("RUN --network=bridge x")
        .message
        .contains("network mode"));
    assert!(err("RUN --mount=type=nfs,target=/x x")
        .message
        .contains("mount type"));
    assert!(err("RUN --mount=type=cache x").message.contains("target"));
    assert!(err("RUN --mount=type=cache,target=/x,bogus=1 x")
        .message
        .contains("unexpected key"));
    assert!(err("RUN --from=x y").message.contains("unknown flag"));
    assert!(err("RUN").message.contains("RUN requires"));
}

#[test]
fn env_label_arg() {
    assert_eq!(
        one(r#"ENV A=1 B="two words" C=three\ words"#).command,
        Command::Env(vec![
            KeyValue {
                key: "A".into(),
                value: "1".into(),
                legacy: false
            },
            KeyValue {
                key: "B".into(),
                value: "\"two words\"".into(),
                legacy: false
            },
            KeyValue {
                key: "C".into(),
                value: "three\\ words".into(),
                legacy: false
            },
        ])
    );
    assert_eq!(
        one("ENV PATH /usr/local/bin:$PATH with spaces").command,
        Command::Env(vec![KeyValue {
            key: "PATH".into(),
            value: "/usr/local/bin:$PATH with spaces".into(),
            legacy: true
        }])
    );
    assert!(err("ENV A").message.contains("two arguments"));
    assert!(err("ENV A=1 B").message.contains("can't find ="));
    assert!(err("ENV =1").message.contains("can not be blank"));
    assert!(err("LABEL").message.contains("at least one"));
    assert_eq!(
        one(r#"LABEL "com.example.vendor"="ACME Inc" version=1.0"#).command,
        Command::Label(vec![
            KeyValue {
                key: "\"com.example.vendor\"".into(),
                value: "\"ACME Inc\"".into(),
                legacy: false
            },
            KeyValue {
                key: "version".into(),
                value: "1.0".into(),
                legacy: false
            },
        ])
    );
    assert_eq!(
        one("ARG A B=2 C=").command,
        Command::Arg(vec![
            ArgDecl {
                name: "A".into(),
                default: None
            },
            ArgDecl {
                name: "B".into(),
                default: Some("2".into())
            },
            ArgDecl {
                name: "C".into(),
                default: Some("".into())
            },
        ])
    );
}

#[test]
fn add_copy_volume_and_simple_instructions() {
    let i = one("COPY --from=build --chown=app:app --chmod=755 --link /out/app /usr/bin/");
    assert_eq!(i.flag("from"), Some(Some("build")));
    assert_eq!(i.flag("link"), Some(None));
    assert_eq!(
        i.command,
        Command::Copy(Transfer {
            sources: vec!["/out/app".into()],
            dest: "/usr/bin/".into(),
            json: false
        })
    );
    assert_eq!(
        one(r#"ADD ["a b", "c", "/d/"]"#).command,
        Command::Add(Transfer {
            sources: vec!["a b".into(), "c".into()],
            dest: "/d/".into(),
            json: true
        })
    );
    assert!(err("COPY onlyone")
        .message
        .contains("at least two arguments"));
    assert!(err("ADD --from=x a b").message.contains("unknown flag"));
    one("ADD --checksum=sha256:abc https://example.com/x.tar.gz /x");
    assert_eq!(
        one(r#"VOLUME ["/data", "/logs"]"#).command,
        Command::Volume(vec!["/data".into(), "/logs".into()])
    );
    assert_eq!(
        one("VOLUME /data /logs").command,
        Command::Volume(vec!["/data".into(), "/logs".into()])
    );
    assert_eq!(
        one("EXPOSE 80 443/tcp 53/udp").command,
        Command::Expose(vec!["80".into(), "443/tcp".into(), "53/udp".into()])
    );
    assert_eq!(one("USER app:app").command, Command::User("app:app".into()));
    assert!(err("USER a b").message.contains("exactly one"));
    assert_eq!(one("WORKDIR /app").command, Command::Workdir("/app".into()));
    assert!(err("WORKDIR").message.contains("exactly one"));
    assert_eq!(
        one("STOPSIGNAL SIGTERM").command,
        Command::Stopsignal("SIGTERM".into())
    );
    assert_eq!(
        one("MAINTAINER Jane <jane@example.com>").command,
        Command::Maintainer("Jane <jane@example.com>".into())
    );
    assert_eq!(
        one(r#"SHELL ["powershell", "-command"]"#).command,
        Command::Shell(vec!["powershell".into(), "-command".into()])
    );
    assert!(err("SHELL /bin/bash -c").message.contains("JSON form"));
}

#[test]
fn healthcheck() {
    let i = one("HEALTHCHECK --interval=30s --timeout=3s --start-period=1m30s --start-interval=5s --retries=3 CMD curl -f http://localhost/ || exit 1");
    assert_eq!(i.flags.len(), 5);
    assert_eq!(
        i.command,
        Command::Healthcheck(Health::Cmd(CommandLine::Shell(
            "curl -f http://localhost/ || exit 1".into()
        )))
    );
    assert_eq!(
        one(r#"HEALTHCHECK CMD ["/bin/check"]"#).command,
        Command::Healthcheck(Health::Cmd(CommandLine::Exec(vec!["/bin/check".into()])))
    );
    assert_eq!(
        one("HEALTHCHECK NONE").command,
        Command::Healthcheck(Health::None)
    );
    assert!(err("HEALTHCHECK NONE x").message.contains("no arguments"));
    assert!(err("HEALTHCHECK RUN x").message.contains("Unknown type"));
    assert!(err("HEALTHCHECK --interval=10x CMD x")
        .message
        .contains("duration"));
    assert!(err("HEALTHCHECK --interval=10us CMD x")
        .message
        .contains("less than 1ms"));
    assert!(err("HEALTHCHECK --retries=-1 CMD x")
        .message
        .contains("negative"));
    assert!(err("HEALTHCHECK --bogus=1 CMD x")
        .message
        .contains("unknown flag"));
    assert!(err("HEALTHCHECK CMD").message.contains("Missing command"));
    assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
    assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
}

#[test]
fn onbuild() {
    let i = one("ONBUILD COPY . /app/src");
    let Command::Onbuild(sub) = &i.command else {
        panic!("not onbuild")
    };
    assert_eq!(sub.command.name(), "COPY");
    let i = one("ONBUILD RUN --mount=type=cache,target=/c make");
    let Command::Onbuild(sub) = &i.command else {
        panic!("not onbuild")
    };
    assert_eq!(sub.flag("mount"), Some(Some("type=cache,target=/c")));
    assert!(err("ONBUILD ONBUILD RUN x")
        .message
        .contains("isn't allowed"));
    assert!(err("ONBUILD FROM x").message.contains("isn't allowed"));
    assert!(err("ONBUILD MAINTAINER x")
        .message
        .contains("isn't allowed"));
    assert!(err("ONBUILD BOGUS x")
        .message
        .contains("unknown instruction"));
}

#[test]
fn heredocs() {
    let src = "FROM alpine\nRUN <<EOF\napk add curl\necho $HOME\nEOF\nCMD x\n";
    let df = parse(src).unwrap();
    let run = &df.instructions[1];
    assert_eq!(run.heredocs.len(), 1);
    assert_eq!(run.heredocs[0].name, "EOF");
    assert_eq!(run.heredocs[0].content, "apk add curl\necho $HOME\n");
    assert!(run.heredocs[0].expand);
    assert_eq!(run.end_line, 5);
    assert_eq!(df.instructions[2].line, 6);

    // <<- strips leading tabs from the body and the terminator.
    let df = parse("FROM a\nRUN <<-EOT\n\techo a\n\t\techo b\n\tEOT\n").unwrap();
    let doc = &df.instructions[1].heredocs[0];
    assert!(doc.chomp);
    assert_eq!(doc.content, "echo a\necho b\n");

    // Quoted delimiters suppress expansion.
    let df = parse("FROM a\nRUN <<'EOF'\necho $x\nEOF\nRUN <<\"X\"\ny\nX\n").unwrap();
    assert!(!df.instructions[1].heredocs[0].expand);
    assert!(!df.instructions[2].heredocs[0].expand);

    // COPY <<EOF /file and several heredocs on one line, read in order.
    let src = "FROM a\nCOPY <<one.txt <<two.txt /dest/\n1\none.txt\n2\ntwo.txt\nRUN 3<<IN cat <&3\nhello\nIN\n";
    let df = parse(src).unwrap();
    let copy = &df.instructions[1];
    assert_eq!(copy.heredocs.len(), 2);
    assert_eq!(copy.heredocs[0].content, "1\n");
    assert_eq!(copy.heredocs[1].content, "2\n");
    assert_eq!(
        copy.command,
        Command::Copy(Transfer {
            sources: vec!["<<one.txt".into(), "<<two.txt".into()],
            dest: "/dest/".into(),
            json: false
        })
    );
    assert_eq!(df.instructions[2].heredocs[0].fd, Some(3));

    // Heredocs are only recognised in RUN, COPY and ADD.
    let df = parse("FROM a\nCMD cat <<EOF\n").unwrap();
    assert!(df.instructions[1].heredocs.is_empty());

    // A body that never ends is an error on the instruction's line.
    let e = err("FROM a\nRUN <<EOF\necho\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("unterminated heredoc"));
}

#[test]
fn unknown_instruction_and_empty_file() {
    let e = err("FROM a\nRUNN x\n");
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("unknown instruction: RUNN"));
    assert!(e.message.contains("did you mean run"));
    assert!(err("# just a comment\n\n")
        .message
        .contains("no instructions"));
    let (df, errors) = parse_lenient("FROM a\nBAD1 x\nRUN ok\nBAD2 y\n");
    assert_eq!(errors.len(), 2);
    assert_eq!(df.instructions.len(), 2);
}

/// Real-world shapes parse completely.
#[test]
fn corpus() {
    let rust = r#"# syntax=docker/dockerfile:1.7
ARG RUST_VERSION=1.85
FROM rust:${RUST_VERSION}-slim AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release && cp target/release/app /app

FROM debian:bookworm-slim
COPY --from=build /app /usr/local/bin/app
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/app"]
"#;
    let go = r#"FROM --platform=$BUILDPLATFORM golang:1.22-alpine AS builder
ARG TARGETOS TARGETARCH
WORKDIR /go/src/app
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/server ./cmd/server

FROM gcr.io/distroless/static:nonroot
COPY --from=builder /out/server /server
ENTRYPOINT ["/server"]
"#;
    let python = r#"FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
HEALTHCHECK --interval=30s CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8000/')"
CMD ["gunicorn", "-b", "0.0.0.0:8000", "app:app"]
"#;
    let windows = "# escape=`\nFROM mcr.microsoft.com/windows/servercore:ltsc2022\nSHELL [\"powershell\", \"-Command\"]\nRUN New-Item -ItemType Directory C:\\app ; `\n    Write-Host done\nWORKDIR C:\\app\n";
    let onbuild =
        "FROM node:20\nONBUILD COPY package*.json ./\nONBUILD RUN npm ci\nONBUILD COPY . .\n";
    for (src, n) in [
        (rust, 10),
        (go, 10),
        (python, 8),
        (windows, 4),
        (onbuild, 4),
    ] {
        let df = parse(src).unwrap_or_else(|e| panic!("{e}\n{src}"));
        assert_eq!(df.instructions.len(), n, "{src}");
    }
}
