# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_molar_global_optspecs
    string join \n state-dir= api= token-file= ca= json h/help V/version
end

function __fish_molar_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_molar_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_molar_using_subcommand
    set -l cmd (__fish_molar_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c molar -n "__fish_molar_needs_command" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_needs_command" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_needs_command" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_needs_command" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_needs_command" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_needs_command" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_needs_command" -s V -l version -d 'Print version'
complete -c molar -n "__fish_molar_needs_command" -f -a "serve" -d 'Run the controller'
complete -c molar -n "__fish_molar_needs_command" -f -a "config" -d 'The controller\'s configuration file'
complete -c molar -n "__fish_molar_needs_command" -f -a "bmc" -d 'The BMC table (seed 004): where each server\'s BMC is, its user, how the credentials were set and when they last worked (never the password)'
complete -c molar -n "__fish_molar_needs_command" -f -a "policy" -d 'The fleet policy file (chassis models, image catalogue, defaults)'
complete -c molar -n "__fish_molar_needs_command" -f -a "token" -d 'Agent tokens'
complete -c molar -n "__fish_molar_needs_command" -f -a "servers" -d 'List servers'
complete -c molar -n "__fish_molar_needs_command" -f -a "server" -d 'Show one server (`molar server ID`), remove one (`molar server remove ID`) or expect it to enrol again (`molar server reenrol ID`)'
complete -c molar -n "__fish_molar_needs_command" -f -a "call" -d 'Call a method on a server\'s agent and print its result as one line of JSON'
complete -c molar -n "__fish_molar_needs_command" -f -a "task" -d 'Tasks'
complete -c molar -n "__fish_molar_needs_command" -f -a "tasks" -d 'List a server\'s tasks'
complete -c molar -n "__fish_molar_needs_command" -f -a "logs" -d 'Print a server\'s logs'
complete -c molar -n "__fish_molar_needs_command" -f -a "console" -d 'Attach to a server\'s serial-over-LAN console through its BMC (~. detaches, ~B sends a break), or print its console log'
complete -c molar -n "__fish_molar_needs_command" -f -a "console-token" -d 'Make a console token for a viewer that is not the CLI (printed only this once), or revoke every console token of the server'
complete -c molar -n "__fish_molar_needs_command" -f -a "qc" -d 'Check a server\'s stored inventory against a QC spec (a JSON file) without touching the machine; exits 1 when a check fails'
complete -c molar -n "__fish_molar_needs_command" -f -a "events" -d 'Print security events: refused handshakes, superseded sessions, revoked and rotated tokens, expected ramdisk boots; the audit of BMC passwords revealed and logins set'
complete -c molar -n "__fish_molar_needs_command" -f -a "power" -d 'Queue a power request: change the power state or read it (`status`)'
complete -c molar -n "__fish_molar_needs_command" -f -a "bootdev" -d 'Queue a next-boot-device request. `cd --media URL` inserts the image at URL through Redfish virtual media and boots from it once (UEFI; Redfish BMCs only)'
complete -c molar -n "__fish_molar_needs_command" -f -a "bmc-reset" -d 'Queue a BMC cold reset'
complete -c molar -n "__fish_molar_needs_command" -f -a "identify" -d 'Queue a chassis identify (the locator light) through the BMC'
complete -c molar -n "__fish_molar_needs_command" -f -a "history" -d 'Print a server\'s state changes (seed 003\'s lifecycle): from, to, why, when, and the request or task each came from'
complete -c molar -n "__fish_molar_needs_command" -f -a "transitions" -d 'Print every server\'s state changes, oldest first'
complete -c molar -n "__fish_molar_needs_command" -f -a "maintenance" -d 'Take a server into maintenance (from available or error) or return it to available'
complete -c molar -n "__fish_molar_needs_command" -f -a "claim" -d 'Deploy an image on an available server (the claim workflow): write it, boot it, and mark the server reserved once it boots'
complete -c molar -n "__fish_molar_needs_command" -f -a "release" -d 'Release a reserved server (the release workflow): boot it into the ramdisk through its BMC, erase its disks, and return it to available'
complete -c molar -n "__fish_molar_needs_command" -f -a "retry" -d 'Re-run a server\'s failed discovery or release from the step that failed (the steps before it are not run again); it returns to available when it succeeds'
complete -c molar -n "__fish_molar_needs_command" -f -a "workflows" -d 'List a server\'s workflows (discoveries, claims and releases) with their steps, newest first'
complete -c molar -n "__fish_molar_needs_command" -f -a "requests" -d 'List a server\'s control requests, newest first'
complete -c molar -n "__fish_molar_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand serve" -l config -d 'Configuration file (TOML, one key per flag: `retain-logs-days = 30`). Flags win over environment variables (`MOLAR_*`), which win over the file' -r -F
complete -c molar -n "__fish_molar_using_subcommand serve" -l listen -d 'Agent listener address, e.g. 0.0.0.0:7700 (required: here, in the environment or in the file)' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l san -d 'Extra DNS name or IP address for the server certificate (repeatable; in the file a list; MOLAR_SAN is comma-separated)' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l allow-plaintext-agents -d 'Also serve agents that connect without TLS (lab only)' -r -f -a "true\t''
false\t''"
complete -c molar -n "__fish_molar_using_subcommand serve" -l max-connections -d 'Agent connections held at once [default: 20000]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l max-pre-handshake -d 'Agent-port connections held at once before their handshake is answered; more are closed at once (bounds concurrent handshakes, not connected agents) [default: 1024]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l api-max-connections -d 'API connections served at once; past it a client gets 503 busy [default: 512]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l tls-handshake-timeout-s -d 'Seconds a client of either port gets for its TLS handshake [default: 10]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l handshake-timeout-s -d 'Seconds an agent gets for its handshake command once TLS is up [default: 10]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l api-header-timeout-s -d 'Seconds an API client gets to send a request\'s headers; also how long an idle kept-alive API connection stays open [default: 10]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l retain-logs-days -d 'Days agents\' log records are kept (0: forever) [default: 30]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l retain-logs-per-server -d 'Most log records kept per server, the newest (0: no limit) [default: 100000]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l retain-task-events-days -d 'Days task events are kept; a task\'s latest and final events always are (0: forever) [default: 30]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l retain-task-events-per-task -d 'Most events kept per task, the newest (0: no limit) [default: 10000]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l console-capture-s -d 'Seconds between checks that every server with an operator-given BMC address has its console captured into the console log (0: capture only while someone watches) [default: 30]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l bmc-check-s -d 'Seconds between session checks of each BMC with an operator-given address, with the stored credentials (0: no periodic checks) [default: 3600]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l bmc-checks-per-minute -d 'Most BMC check sessions opened a minute, fleet-wide [default: 60]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l metrics-listen -d 'Also serve `/metrics` without the admin token, over plain HTTP, on this address (for a Prometheus scraper on a management network) [default: only on the API, behind the admin token]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l policy -d 'The fleet policy (chassis models with their QC spec, firmware baseline and erase policy; the image catalogue), a TOML file checked at start (`molar policy check`) [default: none: every release erases with `auto`, claims name their image]' -r -F
complete -c molar -n "__fish_molar_using_subcommand serve" -l media-dir -d 'Serve this directory\'s files at `/media/NAME` without the admin token (boot media a BMC fetches, e.g. molar-imagebuilder\'s molar.iso; everything in it is public), on the API listener and on --media-listen [default: no media]' -r -F
complete -c molar -n "__fish_molar_using_subcommand serve" -l media-listen -d 'Also serve `/media/NAME` over plain HTTP on this address, for BMCs that do not fetch virtual media over HTTPS from a private CA (needs --media-dir) [default: only on the API listener]' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l log-format -d 'Log line format on stderr [default: text]' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line with the tracing event\'s fields, for log shippers'"
complete -c molar -n "__fish_molar_using_subcommand serve" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand serve" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand serve" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand serve" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand serve" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -f -a "check" -d 'Check a configuration file, layered under `serve`\'s flags and MOLAR_* environment given here, and print the settings `molar serve` would run with (exit 2 when wrong)'
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -f -a "defaults" -d 'Print every setting with its default, as a configuration file'
complete -c molar -n "__fish_molar_using_subcommand config; and not __fish_seen_subcommand_from check defaults help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l listen -d 'Agent listener address, e.g. 0.0.0.0:7700 (required: here, in the environment or in the file)' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l san -d 'Extra DNS name or IP address for the server certificate (repeatable; in the file a list; MOLAR_SAN is comma-separated)' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l allow-plaintext-agents -d 'Also serve agents that connect without TLS (lab only)' -r -f -a "true\t''
false\t''"
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l max-connections -d 'Agent connections held at once [default: 20000]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l max-pre-handshake -d 'Agent-port connections held at once before their handshake is answered; more are closed at once (bounds concurrent handshakes, not connected agents) [default: 1024]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l api-max-connections -d 'API connections served at once; past it a client gets 503 busy [default: 512]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l tls-handshake-timeout-s -d 'Seconds a client of either port gets for its TLS handshake [default: 10]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l handshake-timeout-s -d 'Seconds an agent gets for its handshake command once TLS is up [default: 10]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l api-header-timeout-s -d 'Seconds an API client gets to send a request\'s headers; also how long an idle kept-alive API connection stays open [default: 10]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l retain-logs-days -d 'Days agents\' log records are kept (0: forever) [default: 30]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l retain-logs-per-server -d 'Most log records kept per server, the newest (0: no limit) [default: 100000]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l retain-task-events-days -d 'Days task events are kept; a task\'s latest and final events always are (0: forever) [default: 30]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l retain-task-events-per-task -d 'Most events kept per task, the newest (0: no limit) [default: 10000]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l console-capture-s -d 'Seconds between checks that every server with an operator-given BMC address has its console captured into the console log (0: capture only while someone watches) [default: 30]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l bmc-check-s -d 'Seconds between session checks of each BMC with an operator-given address, with the stored credentials (0: no periodic checks) [default: 3600]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l bmc-checks-per-minute -d 'Most BMC check sessions opened a minute, fleet-wide [default: 60]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l metrics-listen -d 'Also serve `/metrics` without the admin token, over plain HTTP, on this address (for a Prometheus scraper on a management network) [default: only on the API, behind the admin token]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l policy -d 'The fleet policy (chassis models with their QC spec, firmware baseline and erase policy; the image catalogue), a TOML file checked at start (`molar policy check`) [default: none: every release erases with `auto`, claims name their image]' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l media-dir -d 'Serve this directory\'s files at `/media/NAME` without the admin token (boot media a BMC fetches, e.g. molar-imagebuilder\'s molar.iso; everything in it is public), on the API listener and on --media-listen [default: no media]' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l media-listen -d 'Also serve `/media/NAME` over plain HTTP on this address, for BMCs that do not fetch virtual media over HTTPS from a private CA (needs --media-dir) [default: only on the API listener]' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l log-format -d 'Log line format on stderr [default: text]' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line with the tracing event\'s fields, for log shippers'"
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from defaults" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from defaults" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from defaults" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from defaults" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from defaults" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from defaults" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Check a configuration file, layered under `serve`\'s flags and MOLAR_* environment given here, and print the settings `molar serve` would run with (exit 2 when wrong)'
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "defaults" -d 'Print every setting with its default, as a configuration file'
complete -c molar -n "__fish_molar_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -f -a "list" -d 'List every BMC entry'
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -f -a "show" -d 'Show one server\'s BMC entry'
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -f -a "set" -d 'Replace a server\'s BMC login; a session with it must work first when the BMC has an address (nothing is stored otherwise)'
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -f -a "rotate" -d 'Set a new random password for the BMC\'s user: in-band when the server\'s agent is connected, else over IPMI LAN with the current one; stored once a session with it worked'
complete -c molar -n "__fish_molar_using_subcommand bmc; and not __fish_seen_subcommand_from list show set rotate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from list" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from list" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from list" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from show" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from show" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from show" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from show" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from show" -l reveal -d 'Also print the stored password (and a rotation\'s unconfirmed one); every reveal is written to the audit log (`molar events`)'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l user -r
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l password-file -d 'A file holding the password (its line ending is not part of it)' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l no-verify -d 'Store it without the session check'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from rotate" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from rotate" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from rotate" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from rotate" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from rotate" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "list" -d 'List every BMC entry'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show one server\'s BMC entry'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "set" -d 'Replace a server\'s BMC login; a session with it must work first when the BMC has an address (nothing is stored otherwise)'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Set a new random password for the BMC\'s user: in-band when the server\'s agent is connected, else over IPMI LAN with the current one; stored once a session with it worked'
complete -c molar -n "__fish_molar_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -f -a "check" -d 'Read and check a policy file as `molar serve --policy` would, and summarise it (exit 2 when wrong, naming the line)'
complete -c molar -n "__fish_molar_using_subcommand policy; and not __fish_seen_subcommand_from check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from check" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from check" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from check" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from check" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from check" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "check" -d 'Read and check a policy file as `molar serve --policy` would, and summarise it (exit 2 when wrong, naming the line)'
complete -c molar -n "__fish_molar_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -f -a "create" -d 'Create an agent token and print it (only this once). Without a scope it may be any server, enrolled or new (what every token meant before scopes)'
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -f -a "list" -d 'List agent tokens'
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -f -a "revoke" -d 'Revoke an agent token; its agents\' sessions are closed at once'
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -f -a "rotate" -d 'Replace an agent token by a new secret with the same scope and print it; the old one is revoked and its sessions are closed at once'
complete -c molar -n "__fish_molar_using_subcommand token; and not __fish_seen_subcommand_from create list revoke rotate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l server -d 'Only this enrolled server' -r
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l set -d 'Servers with this label (e.g. a rack); servers it enrols get the label' -r
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l enrol -d 'Only the enrolment of new servers (or of one being re-enrolled)'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from list" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from list" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from list" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from revoke" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from revoke" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from revoke" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from revoke" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from revoke" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from rotate" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from rotate" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from rotate" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from rotate" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from rotate" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create an agent token and print it (only this once). Without a scope it may be any server, enrolled or new (what every token meant before scopes)'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "list" -d 'List agent tokens'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "revoke" -d 'Revoke an agent token; its agents\' sessions are closed at once'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Replace an agent token by a new secret with the same scope and print it; the old one is revoked and its sessions are closed at once'
complete -c molar -n "__fish_molar_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand servers" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand servers" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand servers" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand servers" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand servers" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand servers" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -l inventory -d 'Include the stored inventory'
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -a "add" -d 'Enrol a server by its BMC before it ever boots the ramdisk: the controller opens a session with the BMC (nothing is stored if that fails) and creates the server in `initial`; its agent, when it connects, is recognised as the same server'
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -a "remove" -d 'Remove a server with its connections, tasks, task events, logs and BMC entry, closing its agent connection (an agent still running there registers again as a new server)'
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -a "reenrol" -d 'Expect the server to boot the ramdisk again: until then an enrolment (or set) token may claim it, and its new boot may replace its session'
complete -c molar -n "__fish_molar_using_subcommand server; and not __fish_seen_subcommand_from add remove reenrol help" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l bmc -d 'The BMC: redfish://HOST[:PORT] (HTTPS, default port 443), ipmi://HOST[:PORT] (default port 623), or a bare HOST, HOST:PORT or [IPV6]:PORT, probed (a Redfish service root over HTTPS first, then IPMI)' -r
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l bmc-user -r
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l bmc-password-file -d 'A file holding the BMC password (one line; a trailing newline is ignored)' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l bmc-ca -d 'Redfish: trust the BMC\'s certificate when this CA (PEM file) signed it' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l bmc-fingerprint -d 'Redfish: pin the BMC\'s certificate by its SHA-256 fingerprint (shown by a first `server add` without a trust option)' -r
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l allow-ipmi15 -d 'Allow IPMI 1.5 sessions (weak authentication) with this BMC'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l bmc-insecure -d 'Redfish: do not check the BMC\'s certificate (labs only)'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from remove" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from remove" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from remove" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from remove" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from remove" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from reenrol" -l for-s -d 'Seconds the expectation lasts (default 3600)' -r
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from reenrol" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from reenrol" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from reenrol" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from reenrol" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from reenrol" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from reenrol" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from help" -f -a "add" -d 'Enrol a server by its BMC before it ever boots the ramdisk: the controller opens a session with the BMC (nothing is stored if that fails) and creates the server in `initial`; its agent, when it connects, is recognised as the same server'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a server with its connections, tasks, task events, logs and BMC entry, closing its agent connection (an agent still running there registers again as a new server)'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from help" -f -a "reenrol" -d 'Expect the server to boot the ramdisk again: until then an enrolment (or set) token may claim it, and its new boot may replace its session'
complete -c molar -n "__fish_molar_using_subcommand server; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand call" -l timeout -d 'Seconds to wait for the agent\'s answer' -r
complete -c molar -n "__fish_molar_using_subcommand call" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand call" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand call" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand call" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand call" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand call" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -f -a "start" -d 'Start a task on a server'
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -f -a "show" -d 'Show a task'
complete -c molar -n "__fish_molar_using_subcommand task; and not __fish_seen_subcommand_from start show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from start" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from start" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from start" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from start" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from start" -l wait -d 'Follow the task\'s progress until it ends'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from start" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from show" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from show" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from show" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from show" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from help" -f -a "start" -d 'Start a task on a server'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show a task'
complete -c molar -n "__fish_molar_using_subcommand task; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand tasks" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand tasks" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand tasks" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand tasks" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand tasks" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand tasks" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand logs" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand logs" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand logs" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand logs" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand logs" -s f -l follow -d 'Keep printing new records'
complete -c molar -n "__fish_molar_using_subcommand logs" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand logs" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand console" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand console" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand console" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand console" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand console" -l force -d 'Take the console over from the session holding it (it is told and detached)'
complete -c molar -n "__fish_molar_using_subcommand console" -l log -d 'Print the bounded log of what the console showed, then exit'
complete -c molar -n "__fish_molar_using_subcommand console" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand console" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand console-token" -l ttl -d 'Seconds the token is valid (default 3600)' -r
complete -c molar -n "__fish_molar_using_subcommand console-token" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand console-token" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand console-token" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand console-token" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand console-token" -l revoke
complete -c molar -n "__fish_molar_using_subcommand console-token" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand console-token" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand qc" -l spec -r -F
complete -c molar -n "__fish_molar_using_subcommand qc" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand qc" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand qc" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand qc" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand qc" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand qc" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand events" -l server -d 'Only this server\'s events' -r
complete -c molar -n "__fish_molar_using_subcommand events" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand events" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand events" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand events" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand events" -s f -l follow -d 'Keep printing new events'
complete -c molar -n "__fish_molar_using_subcommand events" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand events" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand power" -l wait-timeout -d 'Seconds `--wait` waits at most' -r
complete -c molar -n "__fish_molar_using_subcommand power" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand power" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand power" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand power" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand power" -l wait -d 'Wait for the request to finish; exit 5 when it failed'
complete -c molar -n "__fish_molar_using_subcommand power" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand power" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l media -d 'With `cd`: the http(s) URL of a bootable ISO for the BMC\'s virtual media' -r
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l wait-timeout -d 'Seconds `--wait` waits at most' -r
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l persistent -d 'Every boot, not only the next one'
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l efi -d 'Boot in UEFI mode'
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l wait -d 'Wait for the request to finish; exit 5 when it failed'
complete -c molar -n "__fish_molar_using_subcommand bootdev" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand bootdev" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -l wait-timeout -d 'Seconds `--wait` waits at most' -r
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -l wait -d 'Wait for the request to finish; exit 5 when it failed'
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand bmc-reset" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand identify" -l seconds -d 'Seconds the light stays on (default: the BMC\'s own interval)' -r
complete -c molar -n "__fish_molar_using_subcommand identify" -l wait-timeout -d 'Seconds `--wait` waits at most' -r
complete -c molar -n "__fish_molar_using_subcommand identify" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand identify" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand identify" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand identify" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand identify" -l off -d 'Turn the light off'
complete -c molar -n "__fish_molar_using_subcommand identify" -l wait -d 'Wait for the request to finish; exit 5 when it failed'
complete -c molar -n "__fish_molar_using_subcommand identify" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand identify" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand history" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand history" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand history" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand history" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand history" -s w -l watch -l follow -d 'Keep printing new changes'
complete -c molar -n "__fish_molar_using_subcommand history" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand history" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand transitions" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand transitions" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand transitions" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand transitions" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand transitions" -s w -l watch -l follow -d 'Keep printing new changes'
complete -c molar -n "__fish_molar_using_subcommand transitions" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand transitions" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand maintenance" -l firmware -d 'With `on`: a decom.firmware_secure plan (a JSON file) run in maintenance' -r -F
complete -c molar -n "__fish_molar_using_subcommand maintenance" -l reason -d 'Why, kept in the server\'s history' -r
complete -c molar -n "__fish_molar_using_subcommand maintenance" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand maintenance" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand maintenance" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand maintenance" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand maintenance" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand maintenance" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand claim" -l image -d 'An image of the policy\'s catalogue (`molar serve --policy`), by id' -r
complete -c molar -n "__fish_molar_using_subcommand claim" -l image-spec -d 'The image spec, a JSON file ({"id", "urls", "checksum", "format", ...})' -r -F
complete -c molar -n "__fish_molar_using_subcommand claim" -l device -d 'The disk the image is written to' -r
complete -c molar -n "__fish_molar_using_subcommand claim" -l config-drive -d 'The config drive, a JSON file (`run_image`\'s `config_drive`)' -r -F
complete -c molar -n "__fish_molar_using_subcommand claim" -l kernel-args -d 'Appended to the deployed kernel\'s command line (kexec only)' -r
complete -c molar -n "__fish_molar_using_subcommand claim" -l name -d 'The deployed system\'s host name (its config drive\'s `name` and `hostname`, unless the config drive\'s meta data gives them)' -r
complete -c molar -n "__fish_molar_using_subcommand claim" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand claim" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand claim" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand claim" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand claim" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand claim" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand release" -l erase-method -d 'auto (strongest each disk offers), metadata (express), overwrite, nvme_sanitize, nvme_format, ata_secure_erase or discard' -r
complete -c molar -n "__fish_molar_using_subcommand release" -l passes -d 'With overwrite: passes (the last writes zeros)' -r
complete -c molar -n "__fish_molar_using_subcommand release" -l exclude -d 'A device to leave alone (repeatable)' -r
complete -c molar -n "__fish_molar_using_subcommand release" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand release" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand release" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand release" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand release" -l in-ramdisk -d 'The server is already in the ramdisk: no network boot and power cycle'
complete -c molar -n "__fish_molar_using_subcommand release" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand release" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand retry" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand retry" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand retry" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand retry" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand retry" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand retry" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand workflows" -l limit -r
complete -c molar -n "__fish_molar_using_subcommand workflows" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand workflows" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand workflows" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand workflows" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand workflows" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand workflows" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand requests" -l limit -d 'Most requests shown' -r
complete -c molar -n "__fish_molar_using_subcommand requests" -l state-dir -d 'Controller state directory [default: /var/lib/molar]: `serve` keeps everything there (its config file\'s `state-dir` may name another); clients read api.url, admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise' -r -F
complete -c molar -n "__fish_molar_using_subcommand requests" -l api -d 'API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on (default 127.0.0.1:7701)' -r
complete -c molar -n "__fish_molar_using_subcommand requests" -l token-file -d 'File holding the admin token' -r -F
complete -c molar -n "__fish_molar_using_subcommand requests" -l ca -d 'CA certificate (PEM) the API\'s certificate is checked against' -r -F
complete -c molar -n "__fish_molar_using_subcommand requests" -l wait -d 'Wait until none of them is pending or active'
complete -c molar -n "__fish_molar_using_subcommand requests" -l json -d 'Print JSON instead of tables and text'
complete -c molar -n "__fish_molar_using_subcommand requests" -s h -l help -d 'Print help'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "serve" -d 'Run the controller'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "config" -d 'The controller\'s configuration file'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "bmc" -d 'The BMC table (seed 004): where each server\'s BMC is, its user, how the credentials were set and when they last worked (never the password)'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "policy" -d 'The fleet policy file (chassis models, image catalogue, defaults)'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "token" -d 'Agent tokens'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "servers" -d 'List servers'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "server" -d 'Show one server (`molar server ID`), remove one (`molar server remove ID`) or expect it to enrol again (`molar server reenrol ID`)'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "call" -d 'Call a method on a server\'s agent and print its result as one line of JSON'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "task" -d 'Tasks'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "tasks" -d 'List a server\'s tasks'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "logs" -d 'Print a server\'s logs'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "console" -d 'Attach to a server\'s serial-over-LAN console through its BMC (~. detaches, ~B sends a break), or print its console log'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "console-token" -d 'Make a console token for a viewer that is not the CLI (printed only this once), or revoke every console token of the server'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "qc" -d 'Check a server\'s stored inventory against a QC spec (a JSON file) without touching the machine; exits 1 when a check fails'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "events" -d 'Print security events: refused handshakes, superseded sessions, revoked and rotated tokens, expected ramdisk boots; the audit of BMC passwords revealed and logins set'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "power" -d 'Queue a power request: change the power state or read it (`status`)'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "bootdev" -d 'Queue a next-boot-device request. `cd --media URL` inserts the image at URL through Redfish virtual media and boots from it once (UEFI; Redfish BMCs only)'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "bmc-reset" -d 'Queue a BMC cold reset'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "identify" -d 'Queue a chassis identify (the locator light) through the BMC'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "history" -d 'Print a server\'s state changes (seed 003\'s lifecycle): from, to, why, when, and the request or task each came from'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "transitions" -d 'Print every server\'s state changes, oldest first'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "maintenance" -d 'Take a server into maintenance (from available or error) or return it to available'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "claim" -d 'Deploy an image on an available server (the claim workflow): write it, boot it, and mark the server reserved once it boots'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "release" -d 'Release a reserved server (the release workflow): boot it into the ramdisk through its BMC, erase its disks, and return it to available'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "retry" -d 'Re-run a server\'s failed discovery or release from the step that failed (the steps before it are not run again); it returns to available when it succeeds'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "workflows" -d 'List a server\'s workflows (discoveries, claims and releases) with their steps, newest first'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "requests" -d 'List a server\'s control requests, newest first'
complete -c molar -n "__fish_molar_using_subcommand help; and not __fish_seen_subcommand_from serve config bmc policy token servers server call task tasks logs console console-token qc events power bootdev bmc-reset identify history transitions maintenance claim release retry workflows requests help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Check a configuration file, layered under `serve`\'s flags and MOLAR_* environment given here, and print the settings `molar serve` would run with (exit 2 when wrong)'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "defaults" -d 'Print every setting with its default, as a configuration file'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "list" -d 'List every BMC entry'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "show" -d 'Show one server\'s BMC entry'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "set" -d 'Replace a server\'s BMC login; a session with it must work first when the BMC has an address (nothing is stored otherwise)'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "rotate" -d 'Set a new random password for the BMC\'s user: in-band when the server\'s agent is connected, else over IPMI LAN with the current one; stored once a session with it worked'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "check" -d 'Read and check a policy file as `molar serve --policy` would, and summarise it (exit 2 when wrong, naming the line)'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "create" -d 'Create an agent token and print it (only this once). Without a scope it may be any server, enrolled or new (what every token meant before scopes)'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "list" -d 'List agent tokens'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "revoke" -d 'Revoke an agent token; its agents\' sessions are closed at once'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "rotate" -d 'Replace an agent token by a new secret with the same scope and print it; the old one is revoked and its sessions are closed at once'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from server" -f -a "add" -d 'Enrol a server by its BMC before it ever boots the ramdisk: the controller opens a session with the BMC (nothing is stored if that fails) and creates the server in `initial`; its agent, when it connects, is recognised as the same server'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from server" -f -a "remove" -d 'Remove a server with its connections, tasks, task events, logs and BMC entry, closing its agent connection (an agent still running there registers again as a new server)'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from server" -f -a "reenrol" -d 'Expect the server to boot the ramdisk again: until then an enrolment (or set) token may claim it, and its new boot may replace its session'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from task" -f -a "start" -d 'Start a task on a server'
complete -c molar -n "__fish_molar_using_subcommand help; and __fish_seen_subcommand_from task" -f -a "show" -d 'Show a task'
