################################################################################
#
# tessera-server
#
################################################################################

# As tessera-agent: a prebuilt binary and the server's files of images/rootfs.
TESSERA_SERVER_LICENSE = Apache-2.0
TESSERA_SERVER_BINARY = $(call qstrip,$(BR2_PACKAGE_TESSERA_SERVER_BINARY))
TESSERA_SERVER_ROOTFS = $(BR2_EXTERNAL_TESSERA_PATH)/../rootfs

# The same as sysusers.d/tessera-server.conf; members of the group may use the
# server's admin socket.
TESSERA_SERVER_USERS = tessera -1 tessera -1 * /var/lib/tessera - - Tessera SPIFFE server

ifeq ($(BR_BUILDING),y)
ifeq ($(TESSERA_SERVER_BINARY),)
$(error BR2_PACKAGE_TESSERA_SERVER_BINARY is empty: set it to the path of the tessera-server binary for this target)
endif
endif

define TESSERA_SERVER_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(TESSERA_SERVER_BINARY) $(TARGET_DIR)/usr/bin/tessera-server
	$(INSTALL) -D -m 0644 $(TESSERA_SERVER_ROOTFS)/usr/lib/sysusers.d/tessera-server.conf $(TARGET_DIR)/usr/lib/sysusers.d/tessera-server.conf
	$(INSTALL) -D -m 0644 $(TESSERA_SERVER_ROOTFS)/usr/lib/tmpfiles.d/tessera-server.conf $(TARGET_DIR)/usr/lib/tmpfiles.d/tessera-server.conf
endef

define TESSERA_SERVER_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(TESSERA_SERVER_ROOTFS)/usr/lib/systemd/system/tessera-server.service $(TARGET_DIR)/usr/lib/systemd/system/tessera-server.service
endef

$(eval $(generic-package))
