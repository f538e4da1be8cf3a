# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_molar_agent_global_optspecs
    string join \n h/help V/version
end

function __fish_molar_agent_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_molar_agent_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_molar_agent_using_subcommand
    set -l cmd (__fish_molar_agent_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c molar-agent -n "__fish_molar_agent_needs_command" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -s V -l version -d 'Print version'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "run" -d 'Connect to a controller and serve it until stopped'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "init" -d 'Be the ramdisk\'s /init: mount, load modules, DHCP, read molar.* settings from the kernel command line, then serve the controller forever. Refused unless PID 1'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "bmc" -d 'Talk to this machine\'s BMC through /dev/ipmi0 (the same code the controller\'s `bmc.*` and `chassis.*` methods run)'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "inventory" -d 'Print this machine\'s hardware inventory as JSON (the `inventory` method\'s result)'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "qc" -d 'Check this machine against a spec file (what `decom.qc` does); exits non-zero when a check fails'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "erase" -d 'Securely erase disks here, with a progress bar (the `decom.disk_erase` engine)'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "image" -d 'Write an OS image here, with a progress bar (the `standbye.prepare_image` pipeline)'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "configdrive" -d 'Write a config drive here (what `standbye.run_image` does with its `config_drive`)'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "call" -d 'Run any protocol method locally and print its JSON result'
complete -c molar-agent -n "__fish_molar_agent_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l controller -d 'The controller\'s agent listener, HOST:PORT' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l ca -d 'PEM file with the controller\'s CA certificate' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l ca-fingerprint -d 'Pin the controller\'s CA by fingerprint: sha256:HEX' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l token-file -d 'File holding the agent token (created with `molar token create`)' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l root -d 'Root under which /sys, /proc and /dev are read' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l log -d 'Log level forwarded and printed: error, warn, info, debug, trace' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l allow-host -d 'Outside the ramdisk, the only devices destructive methods may touch (tests use loop devices). Repeatable. Without it, a host agent refuses every destructive action' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l insecure -d 'Connect without TLS (lab only; the controller must allow plaintext agents)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -l allow-host-power -d 'Outside the ramdisk, let the controller reboot, power off or power-cycle this machine and reset its BMC (reboot, poweroff, chassis.power, bmc.reset). Refused without it'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand run" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand init" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -l root -d 'Root under which /dev/ipmi0 is found' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -l allow-host-power -d 'Allow `power` actions other than `status`, and `reset`, on this host'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -f -a "info" -d 'Device id, firmware, LAN channels and users (never passwords)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -f -a "set-credentials" -d 'Create or update a BMC user; prints the credentials as JSON'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -f -a "reset" -d 'Reset the BMC: cold or warm'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -f -a "boot-device" -d 'Set the next boot device: pxe, disk, bios, cdrom or none'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -f -a "power" -d 'Chassis power: status, on, off, soft, reset or cycle'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and not __fish_seen_subcommand_from info set-credentials reset boot-device power help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from info" -l root -d 'Root under which /dev/ipmi0 is found' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from info" -l allow-host-power -d 'Allow `power` actions other than `status`, and `reset`, on this host'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from info" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -l username -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -l password-file -d 'File holding the password; a strong one is generated when absent' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -l user-id -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -l channel -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -l privilege -d 'callback, user, operator, administrator or oem' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -l root -d 'Root under which /dev/ipmi0 is found' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -l allow-host-power -d 'Allow `power` actions other than `status`, and `reset`, on this host'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from set-credentials" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from reset" -l root -d 'Root under which /dev/ipmi0 is found' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from reset" -l allow-host-power -d 'Allow `power` actions other than `status`, and `reset`, on this host'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from reset" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from boot-device" -l root -d 'Root under which /dev/ipmi0 is found' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from boot-device" -l persistent
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from boot-device" -l efi
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from boot-device" -l allow-host-power -d 'Allow `power` actions other than `status`, and `reset`, on this host'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from boot-device" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from power" -l root -d 'Root under which /dev/ipmi0 is found' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from power" -l allow-host-power -d 'Allow `power` actions other than `status`, and `reset`, on this host'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from power" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "info" -d 'Device id, firmware, LAN channels and users (never passwords)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "set-credentials" -d 'Create or update a BMC user; prints the credentials as JSON'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "reset" -d 'Reset the BMC: cold or warm'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "boot-device" -d 'Set the next boot device: pxe, disk, bios, cdrom or none'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "power" -d 'Chassis power: status, on, off, soft, reset or cycle'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand bmc; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand inventory" -l root -d 'Root under which /sys, /proc and /dev are read (a fixture tree in tests)' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand inventory" -l spec-template -d 'Print instead a `decom.qc` spec this machine passes, to edit and keep per model'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand inventory" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand qc" -l spec -d 'The spec, as JSON (`molar-agent inventory --spec-template` writes one)' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand qc" -l burnin -d 'Burn-in settings, as JSON (the `burnin` of `decom.qc`): memory, cpu, disks, nics' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand qc" -l allow-host -d 'Allow the disk burn-in to read this device on this host (read-only; outside the ramdisk no other disk is read). Repeatable' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand qc" -l root -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand qc" -l json -d 'Print the report as JSON instead of a table'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand qc" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -l device -d 'Device to erase (/dev/sdX, nvme0n1, ...). Repeatable' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -l method -d 'auto, nvme_sanitize, nvme_format, ata_secure_erase, discard, overwrite, metadata' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -l passes -d 'For overwrite: passes (all but the last random, the last zeros)' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -l root -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -l no-verify -d 'Skip reading back zeros afterwards'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -l allow-host -d 'Allow the named devices to be erased on this host (outside the ramdisk)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -l yes -d 'Confirm that everything on the devices is to be destroyed'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand erase" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and not __fish_seen_subcommand_from write help" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and not __fish_seen_subcommand_from write help" -f -a "write" -d 'Fetch, verify, decompress, convert and write an image to a disk in one pass'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and not __fish_seen_subcommand_from write help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l url -d 'The image\'s URL (http or https). Repeatable: tried in order' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l checksum -d 'sha256:HEX, sha512:HEX, or the URL of a SHA256SUMS-style file' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l device -d 'The disk to write (/dev/nvme0n1, sdb, ...)' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l format -d 'raw or qcow2 (detected when absent; a disagreement is refused)' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l compression -d 'none, gzip, zstd or xz (detected when absent)' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l ca -d 'PEM file of a CA to trust for https, besides the public roots' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l root -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l insecure-skip-checksum -d 'Write without checking the image\'s checksum'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l allow-host -d 'Allow writing the named device on this host (outside the ramdisk)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -l yes -d 'Confirm that everything on the device is to be replaced'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from write" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "write" -d 'Fetch, verify, decompress, convert and write an image to a disk in one pass'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and not __fish_seen_subcommand_from write help" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and not __fish_seen_subcommand_from write help" -f -a "write" -d 'Add (or rewrite) the config-2 partition at the end of a disk and print the outcome'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and not __fish_seen_subcommand_from write help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from write" -l device -d 'The whole disk (/dev/sdX, nvme0n1, ...) holding the deployed image' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from write" -l from -d 'JSON file with the `config_drive` value: {meta_data, network_data?, user_data?, vendor_data?}, a gzip+base64 string, or {url, checksum}' -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from write" -l format -d 'Filesystem built from documents: vfat or iso9660 (a ready image keeps its own)' -r
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from write" -l root -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from write" -l allow-host -d 'Allow the named device to be edited on this host (outside the ramdisk)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from write" -l yes -d 'Confirm that the partition table of the device is to be changed'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from write" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from help" -f -a "write" -d 'Add (or rewrite) the config-2 partition at the end of a disk and print the outcome'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand configdrive; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand call" -l root -r -F
complete -c molar-agent -n "__fish_molar_agent_using_subcommand call" -l allow-host-power -d 'Allow reboot, poweroff, chassis power and BMC resets on this host (never needed for reads); erasing needs `molar-agent erase --allow-host`'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand call" -s h -l help -d 'Print help'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "run" -d 'Connect to a controller and serve it until stopped'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "init" -d 'Be the ramdisk\'s /init: mount, load modules, DHCP, read molar.* settings from the kernel command line, then serve the controller forever. Refused unless PID 1'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "bmc" -d 'Talk to this machine\'s BMC through /dev/ipmi0 (the same code the controller\'s `bmc.*` and `chassis.*` methods run)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "inventory" -d 'Print this machine\'s hardware inventory as JSON (the `inventory` method\'s result)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "qc" -d 'Check this machine against a spec file (what `decom.qc` does); exits non-zero when a check fails'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "erase" -d 'Securely erase disks here, with a progress bar (the `decom.disk_erase` engine)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "image" -d 'Write an OS image here, with a progress bar (the `standbye.prepare_image` pipeline)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "configdrive" -d 'Write a config drive here (what `standbye.run_image` does with its `config_drive`)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "call" -d 'Run any protocol method locally and print its JSON result'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and not __fish_seen_subcommand_from run init bmc inventory qc erase image configdrive call help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "info" -d 'Device id, firmware, LAN channels and users (never passwords)'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "set-credentials" -d 'Create or update a BMC user; prints the credentials as JSON'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "reset" -d 'Reset the BMC: cold or warm'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "boot-device" -d 'Set the next boot device: pxe, disk, bios, cdrom or none'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and __fish_seen_subcommand_from bmc" -f -a "power" -d 'Chassis power: status, on, off, soft, reset or cycle'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "write" -d 'Fetch, verify, decompress, convert and write an image to a disk in one pass'
complete -c molar-agent -n "__fish_molar_agent_using_subcommand help; and __fish_seen_subcommand_from configdrive" -f -a "write" -d 'Add (or rewrite) the config-2 partition at the end of a disk and print the outcome'
