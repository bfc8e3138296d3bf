SUMMARY = "Tessera server: the SPIFFE certificate authority Tessera agents attest to"
DESCRIPTION = "For a controller or edge server built with Yocto. Installs a prebuilt \
tessera-server binary and the server's files of the Tessera repository's \
images/rootfs overlay. A static binary has the memory, disk and TPM key managers; \
PKCS#11 needs the dynamic (glibc) build."
HOMEPAGE = "https://github.com/tessera-id/tessera"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# The tessera-server binary for this machine; the recipe is skipped until it is set.
TESSERA_SERVER_BINARY ?= ""

FILESEXTRAPATHS:prepend := "${THISDIR}/../../../rootfs:"
SRC_URI = " \
    file://usr/lib/systemd/system/tessera-server.service \
    file://usr/lib/sysusers.d/tessera-server.conf \
    file://usr/lib/tmpfiles.d/tessera-server.conf \
"
TESSERA_FILES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
S = "${TESSERA_FILES}"

COMPATIBLE_HOST = "(x86_64|aarch64).*-linux.*"

inherit systemd useradd

# The same as sysusers.d/tessera-server.conf: members of the group may use the
# server's admin socket.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --home-dir ${localstatedir}/lib/tessera \
    --no-create-home --shell ${base_sbindir}/nologin --comment 'Tessera SPIFFE server' tessera"

SYSTEMD_SERVICE:${PN} = "tessera-server.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

python () {
    if not d.getVar('TESSERA_SERVER_BINARY'):
        raise bb.parse.SkipRecipe("TESSERA_SERVER_BINARY is not set: set it to the path of the tessera-server binary for this machine")
}

do_configure[noexec] = "1"
do_compile[noexec] = "1"
do_install[file-checksums] += "${TESSERA_SERVER_BINARY}:True"

do_install() {
    install -D -m 0755 ${TESSERA_SERVER_BINARY} ${D}${bindir}/tessera-server
    install -D -m 0644 ${TESSERA_FILES}/usr/lib/systemd/system/tessera-server.service ${D}${systemd_system_unitdir}/tessera-server.service
    install -D -m 0644 ${TESSERA_FILES}/usr/lib/sysusers.d/tessera-server.conf ${D}${nonarch_libdir}/sysusers.d/tessera-server.conf
    install -D -m 0644 ${TESSERA_FILES}/usr/lib/tmpfiles.d/tessera-server.conf ${D}${nonarch_libdir}/tmpfiles.d/tessera-server.conf
}

FILES:${PN} += "${nonarch_libdir}/sysusers.d \
    ${nonarch_libdir}/tmpfiles.d \
"

INHIBIT_PACKAGE_STRIP = "1"
INHIBIT_PACKAGE_DEBUG_SPLIT = "1"
