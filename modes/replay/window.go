package replay

// WindowAsker is a machine whose interrupt-window exits (machine.ExitWindow)
// are not deterministic points: its KVM may notice a window the guest
// opened without an exit (an IRET setting IF) only at its next exit of any
// kind, so the window exit the primary saw may come elsewhere on the
// backup. On such a machine the primary names the stop of a window exit by
// its signature, as a kick's, and the backup never asks for windows: it
// takes an interrupt only where the log says, reaching that stop by RunTo.
// A backup that goes live asks for them again. (kvmmachine.Stepper is one;
// the software machine's windows are deterministic, and logged as exits.)
type WindowAsker interface {
	// AskWindows says whether InjectPending may ask for an ExitWindow.
	AskWindows(on bool)
}
