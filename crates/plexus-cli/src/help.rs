//! What each command's help shows beyond its definition: an example for every command,
//! at the end of its `--help` and in the manual pages. Kept in one table so a command
//! without one is found by a test, not by a user.

use clap::Command;

/// Command path (words after `plexus`), then the lines of its examples.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "run",
        "plexus run flow.yaml -i service=checkout\nplexus run flow.yaml --inputs inputs.json -o json   # for scripts: the finished run as JSON\nplexus run flow.yaml --follow-logs --pool gpu=1",
    ),
    (
        "resume",
        "plexus resume 01a2            # a unique prefix of the run id is enough",
    ),
    (
        "validate",
        "plexus validate flows/*.yaml\nplexus validate flow.yaml -o json   # problems as data; exit 2 when invalid\nplexus validate flow.yaml --server https://plexus.example.com   # agent steps checked against its agents",
    ),
    (
        "plan",
        "plexus plan flow.yaml\nplexus plan flow.yaml --pool default=8 -o json\nplexus plan flow.yaml --server https://plexus.example.com   # gates as that server sets them",
    ),
    (
        "runs",
        "plexus runs list --interrupted\nplexus runs show 01a2",
    ),
    (
        "runs list",
        "plexus runs list --status failed --limit 20\nplexus runs list --interrupted   # runs no process drives: resume them",
    ),
    ("runs show", "plexus runs show 01a2 -o json"),
    ("runs events", "plexus runs events 01a2 --after 10 -o json"),
    ("runs cancel", "plexus runs cancel 01a2"),
    (
        "runs watch",
        "plexus runs watch 01a2   # Ctrl-C detaches; the run goes on",
    ),
    (
        "signal",
        "plexus signal 01a2 wait-for-deploy --data '{\"version\": \"1.4.2\"}'",
    ),
    (
        "approve",
        "plexus approve 01a2 restart --comment 'checked the blast radius'",
    ),
    (
        "reject",
        "plexus reject 01a2 restart --comment 'not during the sale'",
    ),
    (
        "serve",
        "plexus serve --listen-addr 127.0.0.1:8080\nPLEXUS_BOOTSTRAP_API_KEY=plx_... plexus serve --tls-cert cert.pem --tls-key key.pem",
    ),
    ("config", "plexus config show"),
    (
        "config show",
        "plexus config show -o json   # every value and where it came from",
    ),
    (
        "init",
        "plexus init --server http://127.0.0.1:8080 --api-key plx_...",
    ),
    (
        "login",
        "plexus login -u alice\necho \"$PW\" | plexus login --url https://plexus.example.com -u ci --password-stdin",
    ),
    ("logout", "plexus logout"),
    (
        "user",
        "plexus user list\nplexus user create --email alice@example.com --role engineer",
    ),
    ("user list", "plexus user list -o json"),
    (
        "user create",
        "plexus user create olga --role operator\nplexus user create --email alice@example.com --role engineer\necho \"$PW\" | plexus user create ci-bot --role engineer --password-stdin",
    ),
    ("user set-role", "plexus user set-role olga engineer"),
    (
        "user deactivate",
        "plexus user deactivate olga   # sessions end and keys stop at once",
    ),
    ("user activate", "plexus user activate olga"),
    (
        "api-key",
        "plexus api-key create deploy-bot --user ci\nplexus api-key list",
    ),
    (
        "api-key create",
        "plexus api-key create deploy-bot --user ci   # the secret is printed once",
    ),
    ("api-key list", "plexus api-key list -o json"),
    ("api-key revoke", "plexus api-key revoke k_01a2"),
    (
        "approval",
        "plexus approval list\nplexus approval approve 01a2 restart",
    ),
    (
        "approval list",
        "plexus approval list -o json   # what waits for a decision, with its digest",
    ),
    (
        "approval approve",
        "plexus approval approve 01a2 restart --comment ok",
    ),
    (
        "approval reject",
        "plexus approval reject 01a2 restart --comment 'not now'",
    ),
    (
        "audit",
        "plexus audit list --last 50 --domain security\nplexus audit verify",
    ),
    (
        "audit verify",
        "plexus audit verify   # exit 1 and the first broken record if the chain was altered",
    ),
    (
        "audit list",
        "plexus audit list --last 50 --since 2026-01-01 --domain security",
    ),
    ("audit export", "plexus audit export > audit.jsonl"),
    (
        "settings",
        "plexus settings list\nplexus settings set execution-mode guided",
    ),
    ("settings list", "plexus settings list -o json"),
    ("settings get", "plexus settings get execution_mode"),
    (
        "settings set",
        "plexus settings set execution_mode guided\nplexus settings set approvals.forbid_self_approval true\nplexus settings set providers.openai.api_key sk-... # sealed, never shown again",
    ),
    ("settings unset", "plexus settings unset execution_mode"),
    (
        "completion",
        "plexus completion bash > ~/.local/share/bash-completion/completions/plexus",
    ),
    ("man", "plexus man | man -l -"),
    ("replica", "plexus replica list"),
    (
        "replica list",
        "plexus replica list --database-url postgres://plexus:PASSWORD@db:5432/plexus",
    ),
    (
        "store",
        "plexus store migrate --to postgres://plexus:PASSWORD@db:5432/plexus",
    ),
    (
        "store migrate",
        "plexus store migrate --from sqlite:/var/lib/plexus/plexus.db --to postgres://plexus:PASSWORD@db:5432/plexus",
    ),
    ("token-keys", "plexus token-keys rotate"),
    (
        "token-keys rotate",
        "plexus token-keys rotate --data-dir /var/lib/plexus   # then restart the servers",
    ),
    (
        "workflow",
        "plexus workflow apply flow.yaml\nplexus workflow list",
    ),
    (
        "workflow apply",
        "plexus workflow apply flow.yaml   # a new version when the text changed",
    ),
    ("workflow list", "plexus workflow list -o json"),
    ("workflow get", "plexus workflow get deploy --version 3"),
    ("workflow delete", "plexus workflow delete deploy"),
    (
        "event",
        "plexus event emit deploy.finished --payload '{\"service\": \"api\"}'",
    ),
    (
        "event emit",
        "plexus event emit deploy.finished --payload '{\"service\": \"api\"}' --dedupe-key build-812",
    ),
    (
        "schedule",
        "plexus schedule create nightly-report '0 2 * * *'\nplexus schedule list",
    ),
    ("schedule list", "plexus schedule list -o json"),
    (
        "schedule create",
        "plexus schedule create nightly-report '0 2 * * *' --inputs '{\"days\": 1}'\nplexus schedule create cleanup '*/15 * * * *' --name cleanup-15m --catch-up run_missed",
    ),
    ("schedule pause", "plexus schedule pause nightly-report"),
    ("schedule resume", "plexus schedule resume nightly-report"),
    ("schedule delete", "plexus schedule delete nightly-report"),
    (
        "agent",
        "plexus agent list\nplexus agent get ops\nplexus agent config-set ops root /srv/reports",
    ),
    ("agent list", "plexus agent list -o json"),
    ("agent get", "plexus agent get query_vmetrics"),
    (
        "agent health",
        "plexus agent health query_vmetrics   # exit 1 unless healthy",
    ),
    ("agent config", "plexus agent config query_vmetrics"),
    (
        "agent config-set",
        "plexus agent config-set query_vmetrics metrics_url http://vm:8428\nprintf %s \"$TOKEN\" | plexus agent config-set query_vmetrics api_token --value-stdin",
    ),
    ("agent remove", "plexus agent remove ops"),
    (
        "agent add-mcp",
        "plexus agent add-mcp time -- python3 -m mcp_server_time\nplexus agent add-mcp notes --permission delete_note=admin -- /opt/mcp/notes-server\nplexus agent add-mcp search --url http://127.0.0.1:8000/mcp\nplexus agent add-mcp tickets --env TICKETS_TOKEN=... -- /opt/mcp/tickets-server",
    ),
    (
        "provider",
        "plexus provider add local --base-url http://127.0.0.1:11434/v1 --model llama3.1\nplexus provider list",
    ),
    ("provider list", "plexus provider list -o json"),
    (
        "runs promote",
        "plexus runs promote 01a2 --name tidy-reports -f tidy.yaml\nplexus runs promote 01a2 > tidy.yaml",
    ),
    (
        "provider usage",
        "plexus provider usage --by key --since 2026-11-01\nplexus provider usage --by run -o json",
    ),
    (
        "provider add",
        "printf %s \"$OPENAI_API_KEY\" | plexus provider add openai --base-url https://api.openai.com/v1 --model gpt-4o-mini --api-key-stdin --default",
    ),
    ("provider remove", "plexus provider remove local"),
    (
        "provider test",
        "plexus provider test openai   # one short request, as a run",
    ),
    (
        "ask",
        "plexus ask \"why is checkout slow?\"\nplexus ask \"scale web\" --input replicas=3 --dry-run",
    ),
    (
        "action",
        "plexus action invoke ops inspect --param path=reports",
    ),
    (
        "action invoke",
        "plexus action invoke ops inspect --param path=reports\nplexus action invoke query_vmetrics query_range -p query='up' -p step:=60 -o json\nplexus action invoke ops write_note --params-json '{\"path\": \"n.txt\", \"text\": \"hi\"}'   # MODIFY: waits for approval",
    ),
    (
        "bench",
        "plexus bench\nplexus bench --scenario http-clients -o json\nplexus bench --quick",
    ),
];

/// `cmd` with each command's examples after its long help, all the way down.
pub fn with_examples(cmd: Command) -> Command {
    add(cmd, "")
}

fn add(mut cmd: Command, path: &str) -> Command {
    if let Some((_, text)) = EXAMPLES.iter().find(|(p, _)| *p == path) {
        let lines: Vec<String> = text.lines().map(|l| format!("  {l}")).collect();
        cmd = cmd.after_long_help(format!("Examples:\n{}", lines.join("\n")));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        let sub = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |c| add(c, &sub));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn paths(cmd: &Command, path: &str, out: &mut Vec<String>) {
        for c in cmd.get_subcommands() {
            let sub = if path.is_empty() {
                c.get_name().to_owned()
            } else {
                format!("{path} {}", c.get_name())
            };
            out.push(sub.clone());
            paths(c, &sub, out);
        }
    }

    /// Every command has an example, and every example belongs to a command.
    #[test]
    fn every_command_has_an_example() {
        let cmd = crate::cli::Cli::command();
        let mut all = Vec::new();
        paths(&cmd, "", &mut all);
        let missing: Vec<&String> = all
            .iter()
            .filter(|p| !EXAMPLES.iter().any(|(e, _)| e == p))
            .collect();
        assert!(
            missing.is_empty(),
            "commands without an example: {missing:?}"
        );
        let stray: Vec<&str> = EXAMPLES
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !all.iter().any(|a| a == p))
            .collect();
        assert!(stray.is_empty(), "examples of no command: {stray:?}");
        // Each example line runs the command it documents.
        for (path, text) in EXAMPLES {
            for line in text.lines() {
                assert!(line.contains(&format!("plexus {path}")), "`{path}`: {line}");
            }
        }
    }
}
