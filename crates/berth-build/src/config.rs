//! Metadata instructions (ENV, LABEL, EXPOSE, USER, WORKDIR, VOLUME, STOPSIGNAL, SHELL, CMD,
//! ENTRYPOINT, HEALTHCHECK, ONBUILD) applied to an image's run config: the executor's steps and
//! `import`/`commit --change` both go through [`apply`], so a change means what the same line in a
//! Dockerfile means.

use std::collections::BTreeMap;
use std::path::Path;

use berth_store::image::{HealthConfig, RunConfig};

use crate::error::BuildError;
use crate::executor::{clean_absolute, json, step_error};
use crate::parser::{Command, CommandLine, Health, Instruction};

/// What [`apply`] did: the history line, and the ENV pairs it set (expanded).
pub(crate) struct Applied {
    /// `created_by` for the image history.
    pub created_by: String,
    /// ENV's variables, in order.
    pub env: Vec<(String, String)>,
}

/// Sets `name=value` in the config's environment, replacing an earlier value.
pub(crate) fn set_env(config: &mut RunConfig, name: &str, value: &str) {
    let item = format!("{name}={value}");
    match config
        .env
        .iter_mut()
        .find(|e| e.split('=').next() == Some(name))
    {
        Some(slot) => *slot = item,
        None => config.env.push(item),
    }
}

/// The config's ENV as variables.
pub(crate) fn env_vars(config: &RunConfig) -> BTreeMap<String, String> {
    config
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `path` resolved against the config's working directory (`/` when it sets none), cleaned: where
/// WORKDIR, COPY destinations and RUN mount targets land.
pub(crate) fn in_workdir(config: &RunConfig, path: &str) -> String {
    let base = if config.working_dir.is_empty() {
        "/"
    } else {
        &config.working_dir
    };
    clean_absolute(&Path::new(base).join(path))
}

/// A CMD/ENTRYPOINT/RUN command line as the config runs it: exec form as is, shell form through
/// the config's SHELL (`/bin/sh -c` by default).
pub(crate) fn command_line(config: &RunConfig, line: &CommandLine) -> Vec<String> {
    match line {
        CommandLine::Exec(args) => args.clone(),
        CommandLine::Shell(text) => {
            let mut shell = if config.shell.is_empty() {
                vec!["/bin/sh".to_string(), "-c".to_string()]
            } else {
                config.shell.clone()
            };
            shell.push(text.clone());
            shell
        }
    }
}

/// Applies `ins` to `config` when it is a metadata instruction, substituting variables with
/// `expand(config as it is now, word)` where Docker does; `None` for other instructions.
/// `cmd_set` says whether a CMD was set since the config was inherited: an ENTRYPOINT clears the
/// inherited CMD, not one set here (Docker's rule, for stages and `--change` alike).
pub(crate) fn apply(
    config: &mut RunConfig,
    cmd_set: &mut bool,
    ins: &Instruction,
    expand: &mut dyn FnMut(&RunConfig, &str) -> Result<String, BuildError>,
) -> Result<Option<Applied>, BuildError> {
    let mut env = Vec::new();
    let created_by = match &ins.command {
        Command::Env(pairs) => {
            // Every pair sees the variables as they were before the instruction, as in Docker:
            // `ENV abc=bye def=$abc` gives `def` the old `abc`.
            let before = config.clone();
            let mut shown = Vec::new();
            for kv in pairs {
                let key = expand(&before, &kv.key)?;
                let value = expand(&before, &kv.value)?;
                set_env(config, &key, &value);
                shown.push(format!("{key}={value}"));
                env.push((key, value));
            }
            format!("ENV {}", shown.join(" "))
        }
        Command::Label(pairs) => {
            let mut shown = Vec::new();
            for kv in pairs {
                let key = expand(config, &kv.key)?;
                let value = expand(config, &kv.value)?;
                config.labels.insert(key.clone(), value.clone());
                shown.push(format!("{key}={value}"));
            }
            format!("LABEL {}", shown.join(" "))
        }
        Command::Expose(ports) => {
            let mut shown = Vec::new();
            for p in ports {
                let p = expand(config, p)?;
                let expanded = berth_runtime::options::parse_expose(&p)
                    .map_err(|e| step_error(ins, e.to_string()))?;
                for port in expanded {
                    config
                        .exposed_ports
                        .insert(port.clone(), serde_json::json!({}));
                    shown.push(port);
                }
            }
            format!("EXPOSE {}", shown.join(" "))
        }
        Command::User(user) => {
            config.user = expand(config, user)?;
            format!("USER {}", config.user)
        }
        Command::Workdir(dir) => {
            let dir = expand(config, dir)?;
            config.working_dir = in_workdir(config, &dir);
            format!("WORKDIR {}", config.working_dir)
        }
        Command::Volume(paths) => {
            let mut shown = Vec::new();
            for p in paths {
                let p = expand(config, p)?;
                if p.is_empty() {
                    return Err(step_error(
                        ins,
                        "VOLUME specified can not be an empty string".into(),
                    ));
                }
                config.volumes.insert(p.clone(), serde_json::json!({}));
                shown.push(p);
            }
            format!("VOLUME [{}]", shown.join(" "))
        }
        Command::Stopsignal(sig) => {
            config.stop_signal = expand(config, sig)?;
            format!("STOPSIGNAL {}", config.stop_signal)
        }
        Command::Shell(shell) => {
            config.shell = shell.clone();
            format!("SHELL {}", json(shell))
        }
        Command::Cmd(line) => {
            let cmd = command_line(config, line);
            let shown = format!("CMD {}", json(&cmd));
            config.cmd = Some(cmd);
            *cmd_set = true;
            shown
        }
        Command::Entrypoint(line) => {
            let entrypoint = command_line(config, line);
            let shown = format!("ENTRYPOINT {}", json(&entrypoint));
            config.entrypoint = Some(entrypoint);
            if !*cmd_set {
                config.cmd = None;
            }
            shown
        }
        Command::Healthcheck(health) => {
            config.healthcheck = Some(healthcheck(ins, health)?);
            ins.original.trim_start().to_string()
        }
        Command::Onbuild(inner) => {
            let trigger = inner.original.trim().to_string();
            config.on_build.push(trigger.clone());
            format!("ONBUILD {trigger}")
        }
        Command::From { .. }
        | Command::Run(_)
        | Command::Copy(_)
        | Command::Add(_)
        | Command::Arg(_)
        | Command::Maintainer(_) => return Ok(None),
    };
    Ok(Some(Applied { created_by, env }))
}

/// HEALTHCHECK's config from its command and flags.
pub(crate) fn healthcheck(ins: &Instruction, health: &Health) -> Result<HealthConfig, BuildError> {
    let line = match health {
        Health::None => {
            return Ok(HealthConfig {
                test: vec!["NONE".into()],
                ..HealthConfig::default()
            })
        }
        Health::Cmd(line) => line,
    };
    let duration = |name: &str| -> Result<i64, BuildError> {
        match ins.flag(name) {
            Some(Some(v)) => berth_runtime::options::parse_duration(v)
                .map_err(|e| step_error(ins, format!("--{name}: {e}"))),
            Some(None) => Err(step_error(ins, format!("--{name} needs a value"))),
            None => Ok(0),
        }
    };
    let retries = match ins.flag("retries") {
        Some(Some(v)) => v
            .parse::<i64>()
            .map_err(|_| step_error(ins, format!("--retries: invalid number {v:?}")))?,
        _ => 0,
    };
    let test = match line {
        CommandLine::Exec(args) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(args.iter().cloned());
            t
        }
        CommandLine::Shell(text) => vec!["CMD-SHELL".into(), text.clone()],
    };
    Ok(HealthConfig {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

/// Applies `import`/`commit --change` instructions to `config`, in order, as the same lines of a
/// Dockerfile would (variables are those of the config's ENV). As `docker commit` does, an
/// ENTRYPOINT clears the CMD unless one of the changes set it.
pub fn apply_changes(config: &mut RunConfig, changes: &[String]) -> Result<(), BuildError> {
    let mut cmd_set = false;
    for change in changes {
        let bad = |why: String| BuildError::Invalid(format!("invalid --change {change:?}: {why}"));
        let parsed = crate::parse(change).map_err(|e| bad(e.message))?;
        let ins = match parsed.instructions.as_slice() {
            [ins] => ins,
            [] => return Err(bad("no instruction".into())),
            _ => return Err(bad("one instruction per --change".into())),
        };
        let escape = parsed.directives.escape;
        let mut expand = |config: &RunConfig, word: &str| {
            crate::expand::expand_word(word, &env_vars(config), escape)
                .map(|e| e.value)
                .map_err(|e| step_error(ins, e.to_string()))
        };
        match apply(config, &mut cmd_set, ins, &mut expand) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(bad(format!(
                    "{} is not supported by --change",
                    ins.command.name()
                )))
            }
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(changes: &[&str]) -> Result<RunConfig, BuildError> {
        let mut config = RunConfig::default();
        let changes: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        apply_changes(&mut config, &changes).map(|()| config)
    }

    #[test]
    fn changes_mean_what_dockerfile_lines_mean() {
        let c = changed(&[
            r#"CMD ["sh"]"#,
            "ENTRYPOINT echo hi",
            r#"ENV A=1 B="two words""#,
            "ENV A 3",
            "ENV C=${A}x",
            "WORKDIR /srv",
            "WORKDIR app",
            "EXPOSE 80 53/udp",
            "LABEL x=y",
            "USER www-data",
            "VOLUME /data",
            "STOPSIGNAL SIGINT",
            "HEALTHCHECK --interval=5s CMD true",
        ])
        .unwrap();
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(
            c.entrypoint,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(c.env, vec!["A=3", "B=two words", "C=3x"]);
        assert_eq!(c.working_dir, "/srv/app");
        assert!(c.exposed_ports.contains_key("80/tcp"));
        assert!(c.exposed_ports.contains_key("53/udp"));
        assert_eq!(c.labels["x"], "y");
        assert_eq!(c.user, "www-data");
        assert!(c.volumes.contains_key("/data"));
        assert_eq!(c.stop_signal, "SIGINT");
        assert_eq!(c.healthcheck.unwrap().interval, 5_000_000_000);
        // Substitution in one ENV sees the values from before it, as Docker documents.
        let c = changed(&["ENV abc=hello", "ENV abc=bye def=$abc", "ENV ghi=$abc"]).unwrap();
        assert_eq!(c.env, vec!["abc=bye", "def=hello", "ghi=bye"]);
        // An ENTRYPOINT alone clears the inherited CMD, as in `docker commit`.
        let mut config = RunConfig {
            cmd: Some(vec!["old".into()]),
            ..RunConfig::default()
        };
        apply_changes(&mut config, &[r#"ENTRYPOINT ["x"]"#.to_string()]).unwrap();
        assert_eq!(config.cmd, None);
    }

    #[test]
    fn bad_changes_are_refused() {
        for (change, why) in [
            ("RUN echo", "RUN is not supported"),
            ("FROM busybox", "FROM is not supported"),
            ("NOPE x", "unknown instruction"),
            ("", "no instruction"),
            ("EXPOSE 99999", "invalid --change"),
        ] {
            let err = changed(&[change]).unwrap_err().to_string();
            assert!(err.contains(why), "{change:?}: {err}");
            assert!(err.contains("invalid --change"), "{change:?}: {err}");
        }
    }
}
