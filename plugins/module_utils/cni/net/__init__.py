"""The one netlink layer (pyroute2 only here): netns, rtnetlink socket, sysctl, addresses, links, CHECK."""
