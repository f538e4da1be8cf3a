# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_molar_imagebuilder_global_optspecs
    string join \n h/help V/version
end

function __fish_molar_imagebuilder_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_molar_imagebuilder_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_molar_imagebuilder_using_subcommand
    set -l cmd (__fish_molar_imagebuilder_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_needs_command" -s h -l help -d 'Print help'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_needs_command" -s V -l version -d 'Print version'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_needs_command" -f -a "build" -d 'Build vmlinuz, initramfs.img, boot.ipxe and manifest.json (and molar.iso with --iso) into --out'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l kernel-deb -d 'A Debian kernel package (linux-image-VERSION.deb)' -r -F
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l kernel -d 'An unpacked kernel image (with --modules)' -r -F
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l modules -d 'The kernel\'s lib/modules/VERSION directory (with --kernel)' -r -F
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l agent -d 'The static agent binary [default: the workspace\'s musl release build, built if absent; installed from the package: /usr/lib/molar/molar-agent]' -r -F
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l agent-version -d 'The agent version for the manifest [default: what `AGENT --version` prints]' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l profile -d 'Module profile' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l add-module -d 'More modules on top of the profile (repeatable)' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l out -d 'Output directory' -r -F
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l controller -d 'molar.controller=HOST:PORT' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l ca-fingerprint -d 'molar.ca=sha256:HEX, the controller CA\'s fingerprint' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l token -d 'molar.token=T (also read from MOLAR_TOKEN; never printed)' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l cmdline-extra -d 'More kernel arguments, one word each (repeatable)' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l compression -d 'zstd[:LEVEL] or gzip[:LEVEL] [default: zstd when the kernel unpacks it, else gzip]' -r
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l efi-stub -d 'systemd\'s EFI stub, the front of the ISO\'s unified kernel image (Debian package systemd-boot-efi)' -r -F
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l insecure -d 'molar.insecure=1: plaintext to the controller (lab only)'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l vmlinux -d 'Also write DIR/vmlinux, the uncompressed kernel: QEMU boots it through PVH, about twice as fast to /init under TCG (for the lab; servers boot vmlinuz)'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -l iso -d 'Also write DIR/molar.iso for virtual-media boot: UEFI only (El Torito EFI entry, an ESP holding a unified kernel image); no BIOS boot. It carries the command line without the token: give molar.token as an SMBIOS OEM string'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand build" -s h -l help -d 'Print help'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand help; and not __fish_seen_subcommand_from build help" -f -a "build" -d 'Build vmlinuz, initramfs.img, boot.ipxe and manifest.json (and molar.iso with --iso) into --out'
complete -c molar-imagebuilder -n "__fish_molar_imagebuilder_using_subcommand help; and not __fish_seen_subcommand_from build help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
