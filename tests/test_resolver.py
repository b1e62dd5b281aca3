"""Tests for yadiskpush.connection.resolver: one DNS look-up for many connections."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorPluggableNameResolver
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.connection.resolver import SharedResolver, resolvingReactor


class FakeNameResolver:
    """Answers look-ups only when told to; counts them."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def resolveHostName(self, receiver: Any, hostName: str, *args: Any) -> None:
        receiver.resolutionBegan(object())
        self.pending.append((receiver, hostName))

    def answer(self, *addresses: str) -> None:
        receiver, _ = self.pending.pop(0)
        for address in addresses:
            receiver.addressResolved(IPv4Address("TCP", address, 0))
        receiver.resolutionComplete()


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.nameResolver = FakeNameResolver()


class Receiver:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.complete = False

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.complete = True


class SharedResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.resolver = SharedResolver(self.reactor, ttl=60)

    def resolve(self, name: str = "push.example") -> Receiver:
        receiver = Receiver()
        self.resolver.resolveHostName(receiver, name, 5222)
        return receiver

    def test_concurrentLookUpsShareOne(self) -> None:
        """Look-ups of one name made while one is in flight wait for it."""
        receivers = [self.resolve() for _ in range(100)]
        self.assertEqual(len(self.reactor.nameResolver.pending), 1)
        self.reactor.nameResolver.answer("192.0.2.1", "192.0.2.2")
        for receiver in receivers:
            self.assertTrue(receiver.complete)
            self.assertEqual(receiver.addresses, ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(self.resolver.lookups, 1)

    def test_keptForTheTTL(self) -> None:
        """A resolution is reused until it is ttl seconds old."""
        self.resolve()
        self.reactor.nameResolver.answer("192.0.2.1")
        self.reactor.advance(59)
        self.assertEqual(self.resolve().addresses, ["192.0.2.1"])
        self.assertEqual(self.resolver.lookups, 1)
        self.reactor.advance(1)
        later = self.resolve()
        self.assertFalse(later.complete)
        self.reactor.nameResolver.answer("192.0.2.9")
        self.assertEqual(later.addresses, ["192.0.2.9"])
        self.assertEqual(self.resolver.lookups, 2)

    def test_failureNotKept(self) -> None:
        """A look-up that found nothing is tried again next time."""
        first = self.resolve()
        self.reactor.nameResolver.answer()
        self.assertEqual((first.complete, first.addresses), (True, []))
        self.resolve()
        self.assertEqual(self.resolver.lookups, 2)

    def test_namesApart(self) -> None:
        """Different names are looked up separately."""
        self.resolve("a.example")
        self.resolve("b.example")
        self.assertEqual(self.resolver.lookups, 2)

    def test_resolvingReactor(self) -> None:
        """The proxy reactor offers the shared resolver and the real clock."""
        proxy = resolvingReactor(self.reactor, self.resolver)
        self.assertTrue(IReactorPluggableNameResolver.providedBy(proxy))
        self.assertIs(proxy.nameResolver, self.resolver)
        self.reactor.advance(5)
        self.assertEqual(proxy.seconds(), 5)
